"""The shard format's fixed facts: names, attribute keys, output specs, partitioning and stage keys.

Layout of one stage-one output folder::

    targets/<dataset>/<stage key>/
        shard-00000-of-00016.h5 ... shard-00015-of-00016.h5
        shard-00000-of-00016.h5.sha256 ...   (each shard's sha256, recorded when it was written)
        layouts.jsonl                        (each video's probed layout, gathered from the shards)
        manifest.json

Each shard holds rows = teacher frames. Datasets at the file root: `video_id` (fixed-length UTF-8),
`t_seconds` (float64), `frame_index` (int64); one group per teacher holding one dataset per output
(`<teacher>/<output>`, shape (rows, *output shape)) and `<teacher>/view_box` (float32, (rows, 4)): the part of
the frame that teacher's outputs come from, (x0, y0, x1, y1) as fractions of the whole decoded frame's width and
height, the same for every output of the teacher (one forward pass, one view): its centre crop's box for
classifiers and embeddings, which depends on the video's aspect ratio, (0, 0, 1, 1) for teachers that see the
whole frame (detectors, pose). Stage two keeps the student's crop inside it. Every dataset is chunked along rows and
fletcher32-checksummed, so a flipped bit on disk is an error, never a silent value. Teacher outputs are stored
uncompressed in chunks of at most OUTPUT_CHUNK_BYTES, because stage two reads one or two rows of them per clip: a
2-row read of a 1000-d output cost 0.43 ms from 32-row gzip chunks, 0.13 from lzf and 0.045 uncompressed in
8-row chunks, 0.019 in 4-row ones (one core; bench/scale.py measures it at Kinetics size); gzip saved 12-14 % of
their bytes. The row columns and view boxes, read whole once when stage two starts, stay byte-shuffled and gzip-compressed.
`video_layouts` (uint8, checksummed the same way) holds each of the shard's videos' probed layout as JSON
lines (pipeline.shards.layouts); shards written before it existed lack it and read the same.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from distinit.pipeline.errors import DistinitError
from distinit.pipeline.hashing import sha256_json

FORMAT_VERSION = 5
# What changed at each version, for the one line that refuses an older cache.
FORMAT_CHANGES = {
    2: "keypoints are now stored as coordinates",
    3: "teachers are named instances of a kind, keypoint outputs carry their flip index, embeddings are a kind",
    4: "each output records the part of the frame its teacher saw, and each video its content hash",
    5: "teacher outputs are stored uncompressed in small chunks, so stage two reads a clip's rows at decode speed",
}
MANIFEST_NAME = "manifest.json"

# A keypoints output's attributes (OutputSpec.attributes): stage two draws heatmaps on a grid x grid map with
# Gaussians of sigma cells, and mirrors a clip by taking channel flip_index[k] for channel k.
KEYPOINT_GRID_ATTRIBUTE = "heatmap_grid"
KEYPOINT_SIGMA_ATTRIBUTE = "heatmap_sigma_cells"
KEYPOINT_FLIP_INDEX_ATTRIBUTE = "flip_index"

# Row datasets every shard has, beside the teacher outputs.
VIDEO_ID = "video_id"
T_SECONDS = "t_seconds"
FRAME_INDEX = "frame_index"
ROW_COLUMNS = (VIDEO_ID, T_SECONDS, FRAME_INDEX)
# Per teacher, beside its outputs (never an output's name): the view box of each row (module docstring).
VIEW_BOX = "view_box"
VIEW_BOX_SHAPE = (4,)
VIEW_BOX_DTYPE = "float32"  # exact enough for a pixel of any frame; constant per video, so it compresses to nothing
VIEW_BOX_MEANING = "(x0, y0, x1, y1) of the frame this teacher saw, as fractions of the frame's width and height"
# Not a row column: one JSON line per video (pipeline.shards.layouts). Optional, so no format version change:
# a shard without it (written before) reads as before, and an older distinit ignores it.
VIDEO_LAYOUTS = "video_layouts"
LAYOUT_CHUNK_BYTES = 64 * 1024
# Fixed-length so fletcher32 covers the ids too (variable-length strings live outside the checksummed chunks).
VIDEO_ID_BYTES = 256

# Every chunk holds a power-of-two number of rows dividing FLUSH_ROWS, so the writer can flush all
# datasets at the same row boundaries and the file's bytes do not depend on how rows were batched.
FLUSH_ROWS = 256
MINIMUM_CHUNK_ROWS = 8
TARGET_CHUNK_BYTES = 128 * 1024  # compressed columns: big chunks compress well, and they are read whole
# Teacher outputs (uncompressed): a clip reads one or two rows, and a read costs about the bytes of the chunks it
# touches (fletcher32 runs over each whole chunk): 2 rows of a 1000-d float16 output took 0.019 ms from 4-row
# (8 KB) chunks, 0.037 from 8-row, 0.064 from 16-row (one core, h5py, page cache).
OUTPUT_CHUNK_BYTES = 8 * 1024
OUTPUT_MINIMUM_CHUNK_ROWS = 1
COMPRESSION_LEVEL = 4
# HDF5 file-format bounds fixed (1.10 format, readable by HDF5 >= 1.10), so bytes do not change with the library.
LIBVER = ("v110", "v110")

# File attributes.
ATTR_FORMAT_VERSION = "format_version"
ATTR_SHARD_INDEX = "shard_index"
ATTR_SHARD_COUNT = "shard_count"
ATTR_DATASET = "dataset"
ATTR_STAGE_KEY = "stage_key"
ATTR_CODE_VERSION = "code_version"
ATTR_SAMPLING_JSON = "sampling_json"
ATTR_ATTRIBUTES_JSON = "attributes_json"
ATTR_TEACHER_NAMES_JSON = "teacher_names_json"
ATTR_SKIPPED_JSON = "skipped_videos_json"
REQUIRED_ATTRIBUTES = ("dataset", "stage_key", "code_version", "sampling")

# Teacher group attributes (the full describe() dict lives in `describe_json`, class names aside).
ATTR_TEACHER_NAME = "teacher_name"
ATTR_BACKEND = "backend"
ATTR_WEIGHTS_SHA256 = "weights_sha256"
ATTR_INPUT_SIZE = "input_size"
ATTR_MEAN = "mean"
ATTR_STD = "std"
ATTR_OUTPUTS_JSON = "outputs_json"
ATTR_DESCRIBE_JSON = "describe_json"

# Output dataset attributes.
ATTR_KIND = "kind"
ATTR_MEANING = "meaning"
ATTR_SPEC_DTYPE = "spec_dtype"
ATTR_CLASS_NAMES = "class_names"

# Output kinds the inspector knows how to summarise; any other kind is stored and read just the same.
KIND_LOGITS = "logits"
KIND_MULTILABEL = "multilabel_scores"
KIND_KEYPOINTS = "keypoints"  # (K, 3) = (x / frame width, y / frame height, confidence); stage two renders heatmaps
KIND_FLAG = "flag"

MAXIMUM_SHARD_COUNT = 99_999
SHARD_NAME_PATTERN = re.compile(r"^shard-(\d{5})-of-(\d{5})\.h5$")


class ShardError(DistinitError):
    """A target cache (shard or manifest) that is missing, corrupt or inconsistent."""


def format_mismatch(location: Any, found: Any, dataset: str | None = None) -> str:
    """The one line refusing a cache written in another shard format, saying how to rebuild it."""
    reason = FORMAT_CHANGES.get(FORMAT_VERSION)
    why = f" ({reason})" if reason and isinstance(found, int) and found < FORMAT_VERSION else ""
    data = dataset or "<data>"
    return (
        f"{location}: shard format {found}, this distinit reads {FORMAT_VERSION}{why}; re-run `make extract "
        f"DATA={data}` (or `distinit extract --data {data} ...` with the options it was made with) to rebuild it"
    )


@dataclass(frozen=True)
class OutputSpec:
    """One teacher output as declared in `teacher.describe()['outputs']`."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    kind: str
    meaning: str = ""
    class_names: tuple[str, ...] | None = None
    # Optional override of how the output is stored on disk.
    storage_dtype_name: str | None = None

    @classmethod
    def from_dict(cls, teacher_name: str, spec: dict[str, Any]) -> "OutputSpec":
        name = str(spec.get("name", ""))
        if not name or "/" in name or name == VIEW_BOX:
            raise ValueError(f"teacher {teacher_name!r}: output name {name!r} must be non-empty, without '/', "
                             f"and not {VIEW_BOX}")
        class_names = spec.get("class_names")
        shape = tuple(int(size) for size in spec["shape"])
        # Class names label the first axis: classes of logits/scores, or keypoints of (17, H, W) heatmaps.
        if class_names is not None and (not shape or len(class_names) != shape[0]):
            raise ValueError(f"teacher {teacher_name!r} output {name!r}: {len(class_names)} class names for shape {shape}")
        return cls(
            name=name,
            shape=shape,
            dtype=str(np.dtype(spec["dtype"])),
            kind=str(spec.get("kind", "")),
            meaning=str(spec.get("meaning", "")),
            class_names=None if class_names is None else tuple(str(item) for item in class_names),
            storage_dtype_name=spec.get("storage_dtype"),
        )

    @property
    def storage_dtype(self) -> np.dtype:
        """Float outputs are soft targets: float16 halves the cache and is far below teacher noise."""
        if self.storage_dtype_name is not None:
            return np.dtype(self.storage_dtype_name)
        declared = np.dtype(self.dtype)
        return np.dtype(np.float16) if np.issubdtype(declared, np.floating) else declared


def teacher_name_of(teacher: dict[str, Any]) -> str:
    name = str(teacher.get("name", ""))
    if not name or "/" in name or name in (*ROW_COLUMNS, VIDEO_LAYOUTS):
        raise ValueError(f"teacher name {name!r} must be non-empty, without '/', and not a row column or {VIDEO_LAYOUTS}")
    return name


def output_specs(teacher: dict[str, Any]) -> list[OutputSpec]:
    """The validated output specs of one `describe()` dict."""
    name = teacher_name_of(teacher)
    specs = [OutputSpec.from_dict(name, spec) for spec in teacher.get("outputs", [])]
    if not specs:
        raise ValueError(f"teacher {name!r} declares no outputs")
    if len({spec.name for spec in specs}) != len(specs):
        raise ValueError(f"teacher {name!r} declares an output name twice")
    return specs


def output_key(teacher_name: str, output_name: str) -> str:
    """The row key and HDF5 path of one teacher output, e.g. `imagenet-efficientnet-lite0/logits`."""
    return f"{teacher_name}/{output_name}"


def view_box_key(teacher_name: str) -> str:
    """The row key and HDF5 path of one teacher's view boxes, e.g. `imagenet-efficientnet-lite0/view_box`."""
    return f"{teacher_name}/{VIEW_BOX}"


def view_box_problem(boxes: np.ndarray) -> str | None:
    """Why (N, 4) view boxes are not boxes inside the frame (0 <= x0 < x1 <= 1, 0 <= y0 < y1 <= 1), or None."""
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1:] != VIEW_BOX_SHAPE:
        return f"has shape {boxes.shape}, expected (rows, 4)"
    x0, y0, x1, y1 = boxes.T
    bad = ~(np.isfinite(boxes).all(axis=1) & (x0 >= 0) & (y0 >= 0) & (x1 <= 1) & (y1 <= 1) & (x0 < x1) & (y0 < y1))
    if bad.any():
        first = int(np.argmax(bad))
        return (f"row {first} is {boxes[first].tolist()}, not (x0, y0, x1, y1) with 0 <= x0 < x1 <= 1 and "
                f"0 <= y0 < y1 <= 1 ({int(bad.sum())} such rows)")
    return None


def shard_name(index: int, count: int) -> str:
    """`shard_name(3, 16)` -> 'shard-00003-of-00016.h5'."""
    if not 0 <= index < count <= MAXIMUM_SHARD_COUNT:
        raise ValueError(f"shard {index} of {count}: need 0 <= index < count <= {MAXIMUM_SHARD_COUNT}")
    return f"shard-{index:05d}-of-{count:05d}.h5"


def parse_shard_name(name: str) -> tuple[int, int] | None:
    """(index, count) of a shard file name, or None when the name is not a shard's."""
    match = SHARD_NAME_PATTERN.match(name)
    return None if match is None else (int(match.group(1)), int(match.group(2)))


def shard_of_video(video_id: str, shard_count: int) -> int:
    """The shard a video belongs to: a stable hash of its id, independent of every other video."""
    digest = hashlib.sha256(video_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % shard_count


def partition_videos(video_ids: Iterable[str], shard_count: int) -> list[list[str]]:
    """Split videos over `shard_count` shards: element i lists shard i's videos, in input order.

    Hashing each id (rather than cutting a sorted list into blocks) means a video keeps its shard when
    other videos are added or go missing, so machines sharing the work never disagree about it.
    """
    if not 1 <= shard_count <= MAXIMUM_SHARD_COUNT:
        raise ValueError(f"shard count must be 1..{MAXIMUM_SHARD_COUNT}, got {shard_count}")
    shards: list[list[str]] = [[] for _ in range(shard_count)]
    for video_id in video_ids:
        shards[shard_of_video(video_id, shard_count)].append(video_id)
    return shards


def compute_stage_key(
    dataset_manifest_hash: str,
    teachers: Sequence[dict[str, Any]],
    sampling: dict[str, Any],
    code_version: str,
) -> str:
    """16 hex digits naming a stage-one output folder: changes exactly when the targets' content can.

    Teachers are given as dicts (name, weights sha256, options, or their whole `describe()`); their
    order does not matter, since the cache holds the same outputs whichever order they were listed in.
    """
    ordered = sorted((dict(teacher) for teacher in teachers), key=lambda teacher: str(teacher.get("name", "")))
    return sha256_json(
        {
            "dataset_manifest_hash": dataset_manifest_hash,
            "teachers": ordered,
            "sampling": sampling,
            "code_version": code_version,
        }
    )[:16]


def chunk_rows(row_bytes: int, target_bytes: int = TARGET_CHUNK_BYTES, minimum_rows: int = MINIMUM_CHUNK_ROWS) -> int:
    """Rows per chunk: the largest power of two, at most FLUSH_ROWS and at least `minimum_rows`, whose chunk holds at
    most `target_bytes` (TARGET_CHUNK_BYTES for compressed columns, OUTPUT_CHUNK_BYTES for teacher outputs)."""
    rows = FLUSH_ROWS
    while rows > minimum_rows and rows * row_bytes > target_bytes:
        rows //= 2
    return rows
