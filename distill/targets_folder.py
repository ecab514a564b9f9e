"""Finding and checking the stage-one targets a distillation run reads."""

from __future__ import annotations

import logging
from pathlib import Path

from distinit.pipeline.training.distributed import DistributedContext, all_gather_objects
from distinit.pipeline.errors import DistinitError
from distinit.pipeline.hashing import sha256_json
from distinit.pipeline.shards import MANIFEST_NAME, ShardError, read_manifest, verify
from distinit.pipeline.shards.verify import verified_unchanged

logger = logging.getLogger(__name__)


def resolve_targets_dir(targets: str | Path) -> Path:
    """A targets folder (with manifest.json), or `targets/<data>` whose `latest` names the last extraction."""
    path = Path(targets)
    if (path / MANIFEST_NAME).is_file():
        return path
    latest = path / "latest"
    if latest.is_file():
        resolved = path / latest.read_text().strip()
        if (resolved / MANIFEST_NAME).is_file():
            return resolved
    raise DistinitError(
        f"{path}: no targets here (no {MANIFEST_NAME}, no 'latest'); run `make extract` or pass --targets targets/<data>/<key>"
    )


def check_targets(targets_dir: Path, context: DistributedContext) -> None:
    """Refuse to train on a damaged cache, reading every byte only when nobody has since it last changed.

    Rank 0 stats the sealed files against the record of the last clean `distinit verify` (VERIFIED_NAME: the
    extract stage's make recipe and extract-finalize run it); when that shows no change, no shard is read.
    Otherwise rank 0 runs the full verify (recording nothing: distill writes only under its --out; `distinit
    verify` records it), and every rank raises the first problem rank 0 found, as one line (a collective: the others
    wait under the process group's timeout)."""
    # Rank 0 decides for all (nodes' file-system caches may disagree; every rank must take the same branch).
    if all_gather_objects(verified_unchanged(targets_dir) if context.is_main else None, context)[0]:
        return
    if context.is_main:
        logger.info("%s: no record of a clean verify since its files last changed; reading every shard (run distinit "
                    "verify once to record one)", targets_dir)
    problems = verify(targets_dir) if context.is_main else []
    problems = all_gather_objects(problems, context)[0]
    if problems:
        more = f" (and {len(problems) - 1} more; run distinit verify {targets_dir})" if len(problems) > 1 else ""
        raise ShardError(f"{problems[0]}{more}")


# Manifest fields that say how and from where stage one ran (its config, with worker counts and the dataset
# root as given; the videos root), not what it wrote: re-sealing the same shards from elsewhere changes them.
NOT_CONTENT = ("config", "extra")


def targets_fingerprint(targets_dir: Path) -> str:
    """What identifies the targets' content (part of the distill run key): their manifest without NOT_CONTENT,
    which still holds every shard's sha256, the teachers, the sampling and the stage key."""
    manifest = read_manifest(targets_dir)
    return sha256_json({name: value for name, value in manifest.items() if name not in NOT_CONTENT})
