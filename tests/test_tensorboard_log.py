"""TensorBoard event files beside log.jsonl: the same figures, no duplicate points after a resume, and training
that goes on without the optional tensorboard package."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import pytest
import torch

from distinit.distill.tensorboard_log import INSTALL_HINT, open_tensorboard_log, scalars_of, tag_for
from distinit.distill.train import train
from test_train import _config, tiny_targets  # noqa: F401  (tiny_targets: the module's fixture)


def _log_records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def _event_files(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("events.out.tfevents.*"))


def test_tags_group_train_and_held_out_figures():
    assert tag_for("train_loss") == "train/loss"
    assert tag_for("val_kd/efficientnet_lite0/logits") == "val/kd/efficientnet_lite0/logits"
    assert tag_for("val_agreement_top1") == "val/agreement_top1"
    assert tag_for("clips_per_second") == "progress/clips_per_second"
    record = {"epoch": 2, "step": 10, "lr": 0.1, "train_loss": 1.5, "note": "text", "flag": True}
    assert scalars_of(record) == {"progress/epoch": 2.0, "progress/lr": 0.1, "train/loss": 1.5}


def test_turned_off_writes_nothing(tmp_path):
    with open_tensorboard_log(tmp_path, resumed_step=0, enabled=False) as log:
        log.write_epoch({"epoch": 1, "step": 5, "train_loss": 1.0})
    assert not list(tmp_path.iterdir())


def _logged_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} as TensorBoard reads the run folder (older files' purged points left out)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


def _assert_events_match_log(run_dir: Path) -> None:
    records = _log_records(run_dir)
    expected: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        for tag, value in scalars_of(record).items():
            expected.setdefault(tag, []).append((record["step"], value))
    logged = _logged_scalars(run_dir)
    assert set(logged) == set(expected)
    assert {"train/loss", "val/loss", "progress/lr", "progress/clips_per_second"} <= set(logged)
    assert any(tag.startswith("train/kd/") for tag in logged)
    for tag, points in expected.items():
        assert [step for step, _ in logged[tag]] == [step for step, _ in points], tag
        # Event files keep float32.
        assert [value for _, value in logged[tag]] == pytest.approx([value for _, value in points], rel=1e-6), tag


def test_event_files_hold_the_figures_of_log_jsonl_once_per_epoch_after_a_resume(tiny_targets, tmp_path):
    pytest.importorskip("tensorboard")
    first = train(_config(tiny_targets, tmp_path, save_every_steps=5), show_progress=False)
    run_dir = first.run_dir
    assert len(_event_files(run_dir)) == 1 and [record["step"] for record in _log_records(run_dir)] == [5, 10]
    _assert_events_match_log(run_dir)
    # Killed after epoch 2 was logged but before its checkpoint: back to the one saved at the end of epoch 1.
    shutil.copyfile(run_dir / "checkpoint-step00000005.pt", run_dir / "checkpoint-last.pt")
    assert torch.load(run_dir / "checkpoint-last.pt", weights_only=False)["epoch"] == 1
    # Event files are named by the second they were opened in, and TensorBoard reads them in name order: the tiny
    # first run can end within the second it began, and a resume in that same second could sort before it.
    opened = int(_event_files(run_dir)[0].name.split(".")[3])  # events.out.tfevents.<second>.<host>.<pid>.<n>
    while int(time.time()) <= opened:
        time.sleep(0.05)
    resumed = train(_config(tiny_targets, tmp_path, save_every_steps=5), show_progress=False)
    assert resumed.run_dir == run_dir and resumed.step == 10
    assert len(_event_files(run_dir)) == 2  # appended beside the first
    assert [record["epoch"] for record in _log_records(run_dir)] == [1, 2]
    _assert_events_match_log(run_dir)  # epoch 2 once, with the figures it was logged with again
    again = train(_config(tiny_targets, tmp_path, save_every_steps=5), show_progress=False)
    assert again.step == 10 and len(_event_files(run_dir)) == 2  # nothing left to train: no new file


def test_without_tensorboard_training_goes_on_and_says_how_to_get_it(tiny_targets, tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # `import` of it now raises ImportError
    with caplog.at_level("INFO", logger="distinit.distill.tensorboard_log"):
        result = train(_config(tiny_targets, tmp_path, epochs=1), show_progress=False)
    assert result.epoch == 1 and len(_log_records(result.run_dir)) == 1
    assert not _event_files(result.run_dir)
    hints = [record.getMessage() for record in caplog.records if INSTALL_HINT in record.getMessage()]
    assert len(hints) == 1
