"""Finding and checking the stage-one targets a distillation run reads."""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import DistinitError
from pipeline.hashing import sha256_file
from pipeline.shards import MANIFEST_NAME, ShardError, verify


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


def check_targets(targets_dir: Path) -> None:
    """Refuse to train on a damaged cache: the first problem `distinit verify` finds, as one line."""
    problems = verify(targets_dir)
    if problems:
        more = f" (and {len(problems) - 1} more; run distinit verify {targets_dir})" if len(problems) > 1 else ""
        raise ShardError(f"{problems[0]}{more}")


def targets_fingerprint(targets_dir: Path) -> str:
    """What identifies the targets' content: the sha256 of their manifest (which holds every shard's sha256)."""
    return sha256_file(targets_dir / MANIFEST_NAME)
