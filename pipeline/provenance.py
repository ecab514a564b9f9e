"""What produced an output folder: the final config, the git commit and whether the tree was dirty."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

import pipeline
from pipeline.atomic import atomic_write_text
from pipeline.config import config_to_dict

REPOSITORY = Path(__file__).resolve().parent.parent


def git_state() -> dict[str, Any]:
    """Commit hash and dirty flag of the checkout distinit runs from (None outside a git checkout)."""

    def git(*arguments: str) -> str | None:
        try:
            done = subprocess.run(
                # --no-optional-locks: `git status` would otherwise refresh .git/index, a write outside --out
                ["git", "--no-optional-locks", *arguments],
                cwd=REPOSITORY, capture_output=True, text=True, timeout=10, check=True,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": None if status is None else bool(status)}


def write_provenance(out_dir: str | Path, config: Any, **extra: Any) -> None:
    """Write `config.yaml` and `provenance.json` into `out_dir` (atomically)."""
    out_dir = Path(out_dir)
    config_dict = config_to_dict(config) if not isinstance(config, dict) else config
    atomic_write_text(out_dir / "config.yaml", yaml.safe_dump(config_dict, sort_keys=True))
    record = {
        "distinit_version": pipeline.__version__,
        **git_state(),
        "python": sys.version.split()[0],
        "command": sys.argv,
        **extra,
    }
    atomic_write_text(out_dir / "provenance.json", json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
