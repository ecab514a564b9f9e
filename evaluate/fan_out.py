"""One run of an evaluation or comparison at a time: what a SLURM array task runs (pipeline/cluster/eval.sbatch).

An evaluation is one run per (split, seed); a comparison one per (row, split, seed). Each run lands in the cached
results folder a whole `distinit eval` / `compare` fills (the results key leaves out which splits and seeds run,
evaluate.run_store), after tuning its split on validation as the whole would (the tuning curves are cached too), so
the report job that follows finds every run done and only gathers, writing the same report one machine writes.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from evaluate.config import EvalConfig
from evaluate.finetune import run_eval
from evaluate.tuning import tune
from pipeline.errors import ConfigError


def run_list(config: EvalConfig, inits: Sequence[str] | None = None) -> list[tuple[EvalConfig, int, int]]:
    """Every run, in order (row, then split, then seed): (the row's config, split, seed). `inits`: a comparison's;
    None: `config`'s own init."""
    if inits is None:
        configs = [config]
    else:
        from evaluate.compare import comparison_rows, row_config  # (its plots import matplotlib: a comparison's only)

        config, rows = comparison_rows(config, inits)
        configs = [row_config(config, row) for row in rows]
    return [(row, split, seed) for row in configs for split in config.splits for seed in config.seeds]


def run_one(config: EvalConfig, index: int, inits: Sequence[str] | None = None, show_progress: bool = False) -> str:
    """Run number `index` of run_list (tuning its split first when the config tunes); returns what it ran, in words."""
    runs = run_list(config, inits)
    if not 0 <= index < len(runs):
        raise ConfigError(f"--run-index {index}: this evaluation has {len(runs)} runs, numbered 0-{len(runs) - 1}")
    row, split, seed = runs[index]
    single = dataclasses.replace(row, splits=(split,), seeds=(seed,))
    chosen = tune(single, show_progress=show_progress).chosen() if single.tune_lrs else None
    run_eval(single, show_progress=show_progress, chosen=chosen)
    return f"{row.init}: split {split}, seed {seed}"
