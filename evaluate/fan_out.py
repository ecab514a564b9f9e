"""One piece of an evaluation or comparison at a time: what a SLURM array task runs (pipeline/cluster/eval*.sbatch).

With `tune_lrs`, first one tuning per (row, split) (`tune_one`: the curves on that split's validation part, with the
first seed, cached as a whole `tune` caches them), then one run per (row, split, seed) (`run_one`), which reads every
split's choice from that cache, as the whole would choose it: the results folder's key holds every split's choice,
so the run lands in the folder a whole `distinit eval` / `compare` fills (the key leaves out which splits and seeds
run, evaluate.run_store). The report job that follows then finds every run done and only gathers, writing the same
report one machine writes.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from distinit.evaluate.config import EvalConfig
from distinit.evaluate.finetune import run_eval
from distinit.evaluate.tuning import tune
from distinit.pipeline.errors import ConfigError


def run_list(config: EvalConfig, inits: Sequence[str] | None = None) -> list[tuple[EvalConfig, int, int]]:
    """Every run, in order (row, then split, then seed): (the row's config, split, seed). `inits`: a comparison's;
    None: `config`'s own init."""
    if inits is None:
        configs = [config]
    else:
        from distinit.evaluate.compare import comparison_rows, row_config  # (its plots import matplotlib: a comparison's only)

        config, rows = comparison_rows(config, inits)
        configs = [row_config(config, row) for row in rows]
    return [(row, split, seed) for row in configs for split in config.splits for seed in config.seeds]


def tuning_list(config: EvalConfig, inits: Sequence[str] | None = None) -> list[tuple[EvalConfig, int]]:
    """Every tuning, in order (row, then split): (the row's config, split); none when the config tunes nothing."""
    if not config.tune_lrs:
        return []
    return [(row, split) for row, split, seed in run_list(config, inits) if seed == row.seeds[0]]


def tune_one(config: EvalConfig, index: int, inits: Sequence[str] | None = None, show_progress: bool = False) -> str:
    """Tuning number `index` of tuning_list (its seeds kept: the whole tunes with the first); returns it in words."""
    tunings = tuning_list(config, inits)
    row, split = _numbered(tunings, index, "--tune-index", "tunings")
    tune(dataclasses.replace(row, splits=(split,)), show_progress=show_progress)
    return f"{row.init}: tuned split {split}"


def run_one(config: EvalConfig, index: int, inits: Sequence[str] | None = None, show_progress: bool = False) -> str:
    """Run number `index` of run_list, with every split's choice (cached by the tunings; tuned here if missing);
    returns what it ran, in words."""
    row, split, seed = _numbered(run_list(config, inits), index, "--run-index", "runs")
    chosen = tune(row, show_progress=show_progress).chosen() if row.tune_lrs else None
    run_eval(dataclasses.replace(row, splits=(split,), seeds=(seed,)), show_progress=show_progress, chosen=chosen)
    return f"{row.init}: split {split}, seed {seed}"


def _numbered(items: list, index: int, option: str, what: str):
    if not 0 <= index < len(items):
        raise ConfigError(f"{option} {index}: this evaluation has {len(items)} {what}"
                          + (f", numbered 0-{len(items) - 1}" if items else ""))
    return items[index]
