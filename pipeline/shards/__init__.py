"""The sharded HDF5 target cache that stage one writes and stage two reads.

`targets/<dataset>/<stage key>/shard-00000-of-00016.h5 ... + manifest.json`. One row per teacher frame:
`video_id`, `t_seconds`, `frame_index` and `<teacher>/<output>` for every teacher output. Videos are
assigned to shards by a stable hash of their id (`partition_videos`), so `--shard i/N` runs on different
machines never overlap. `ShardWriter` writes one shard atomically; `write_manifest` seals the set;
`TargetStore` reads rows by index or by video; `stored_layouts` each video's probed layout (so stage two
need not probe it); `verify` and `inspect` back the CLI commands. A writer holds its shard's lease while it
writes (pipeline.shards.lease); `ShardBusy` says another live writer holds it.
"""

from distinit.pipeline.shards.format import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    OutputSpec,
    ShardError,
    compute_stage_key,
    output_key,
    output_specs,
    parse_shard_name,
    partition_videos,
    shard_name,
    shard_of_video,
)
from distinit.pipeline.shards.inspect_targets import inspect
from distinit.pipeline.shards.layouts import LAYOUTS_NAME, stored_layouts
from distinit.pipeline.shards.lease import ShardBusy
from distinit.pipeline.shards.manifest import read_manifest, shard_files, write_manifest
from distinit.pipeline.shards.reader import TargetStore
from distinit.pipeline.shards.verify import verify, verify_shard
from distinit.pipeline.shards.writer import ShardWriter, temporary_files, temporary_shard_path

__all__ = [
    "FORMAT_VERSION",
    "LAYOUTS_NAME",
    "MANIFEST_NAME",
    "OutputSpec",
    "ShardBusy",
    "ShardError",
    "ShardWriter",
    "TargetStore",
    "compute_stage_key",
    "inspect",
    "output_key",
    "output_specs",
    "parse_shard_name",
    "partition_videos",
    "read_manifest",
    "shard_name",
    "shard_files",
    "shard_of_video",
    "stored_layouts",
    "temporary_files",
    "temporary_shard_path",
    "verify",
    "verify_shard",
    "write_manifest",
]
