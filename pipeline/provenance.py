"""What produced an output folder: the final config, the git commit and whether the tree was dirty."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from distinit import pipeline
from distinit.pipeline.atomic import atomic_write_text
from distinit.pipeline.config import config_to_dict

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

    # Installed from a wheel, REPOSITORY is site-packages/distinit: a git repository around it (a venv inside a
    # checkout, a home folder under git) is not the code that runs, so only a checkout whose top is REPOSITORY counts.
    top = git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != REPOSITORY:
        return {"git_commit": None, "git_dirty": None}
    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": None if status is None else bool(status)}


def cpu_model() -> str | None:
    """The processor's model name (Linux /proc/cpuinfo; platform's answer elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def compute_environment() -> dict[str, Any]:
    """What float results depend on beyond the code: the CPU, torch and its BLAS/LAPACK build, the GPU. A re-run on
    the same machine repeats a result bit for bit; another CPU or BLAS may not (docs/results.md, "Reproducibility")."""
    import torch

    config = torch.__config__.show()
    settings = dict(re.findall(r"\b(BLAS_INFO|LAPACK_INFO|USE_MKL|USE_MKLDNN|USE_OPENMP)=([^,\s]+)", config))
    libraries = [line.strip(" -") for line in config.splitlines() if re.search(r"MKL-DNN|OpenMP \d", line)]
    blas = [f"{name}={value}" for name, value in sorted(settings.items())] + libraries
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "blas": blas,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def write_provenance(out_dir: str | Path, config: Any, **extra: Any) -> None:
    """Write `config.yaml` and `provenance.json` into `out_dir` (atomically)."""
    out_dir = Path(out_dir)
    config_dict = config_to_dict(config) if not isinstance(config, dict) else config
    atomic_write_text(out_dir / "config.yaml", yaml.safe_dump(config_dict, sort_keys=True))
    record = {
        "distinit_version": pipeline.__version__,
        **git_state(),
        "python": sys.version.split()[0],
        "environment": compute_environment(),
        "command": sys.argv,
        **extra,
    }
    atomic_write_text(out_dir / "provenance.json", json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
