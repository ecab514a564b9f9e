"""One run of an evaluation at a time (a SLURM array task): the runs are numbered row, split, seed; a wrong index is
a one-line error; `--count-runs` prints how many there are."""

from __future__ import annotations

import dataclasses

import pytest
from click.testing import CliRunner

from distinit.evaluate.config import EvalConfig
from distinit.evaluate.fan_out import run_list, run_one, tune_one, tuning_list
from distinit.pipeline.cli import main
from distinit.pipeline.errors import ConfigError


def test_runs_are_numbered_row_then_split_then_seed():
    config = EvalConfig(data="hmdb51", root="unused", init="scratch", splits=(1, 2), seeds=(0, 1, 2))
    runs = run_list(config)
    assert [(split, seed) for _, split, seed in runs] == [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]
    rows = run_list(config, ["inflated:resnet18", "scratch"])
    # scratch first (the reference), one scratch row per architecture; the inflated row shares lr_trunk_scale 1.0
    assert [row.init for row, _, _ in rows[::6]] == ["scratch", "inflated:resnet18"]
    assert len(rows) == 12 and all(row.lr_trunk_scale == 1.0 for row, _, _ in rows)
    with pytest.raises(ConfigError, match="--run-index 6: this evaluation has 6 runs, numbered 0-5"):
        run_one(config, 6)
    # Tunings: one per (row, split), only when the config tunes.
    assert tuning_list(config) == []
    tuned = dataclasses.replace(config, tune_lrs=(0.01, 0.03))
    assert [(row.init, split) for row, split in tuning_list(tuned)] == [("scratch", 1), ("scratch", 2)]
    assert all(row.seeds == (0, 1, 2) for row, _ in tuning_list(tuned))  # the whole tunes with the first seed
    with pytest.raises(ConfigError, match="--tune-index 0: this evaluation has 0 tunings$"):
        tune_one(config, 0)


def test_count_runs_on_the_command_line():
    result = CliRunner().invoke(main, ["compare", "--inits", "scratch,inflated:resnet18", "--data", "hmdb51", "--root",
                                       "unused", "--splits", "1,2,3", "--seeds", "0,1", "--out", "unused", "--count-runs"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "12"
