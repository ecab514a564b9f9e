"""The comparison report: paired differences against scratch, trunk lr scale, failed test videos, temporal
ablations, pretraining overlap and the shuffled-target control, from RunResults built here."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from dataset_fixtures import make_hmdb51
from distinit.evaluate import compare as compare_module
from distinit.evaluate.compare import compare, init_label, ordered_inits, unique_labels
from distinit.evaluate.config import EvalConfig
from distinit.evaluate.report import results_table, write_report
from distinit.evaluate.results import EvalResult, RunResult, format_table, summarise
from distinit.evaluate.statistics import difference_against
from distinit.pipeline.errors import ConfigError

VIDEOS = 20
SCRATCH = {"kind": "scratch", "spec": "scratch", "architecture": {"name": "r2plus1d_18", "width": "tiny"}}
DISTINIT = {"kind": "checkpoint", "spec": "runs/a.pt", "architecture": {"name": "r2plus1d_18", "width": "tiny"},
            "distill_config": {"frames": 8}}
SEEN_NOTHING = {**DISTINIT, "distill_provenance": {"pretraining_videos": {"count": 2, "names": ["x", "y"]}}}
CONTROL = {**DISTINIT, "spec": "runs/b.pt", "distill_config": {"frames": 8, "shuffle_targets": True}}


def _run(split: int, seed: int, right: int, **values) -> RunResult:
    """A run whose first `right` of VIDEOS test videos are correct; fields RunResult lacks are set after."""
    predictions = [{"id": f"class/v{index}", "label": 0, "predicted": 0 if index < right else 1, "confidence": 0.9}
                   for index in range(VIDEOS)]
    fields = dict(
        split=split, seed=seed, clip_top1=right / VIDEOS, video_top1=right / VIDEOS, video_top5=1.0, train_videos=40,
        test_videos=VIDEOS, test_views=2 * VIDEOS, failed_videos=[], failed_test_videos=0, trunk_lr_scale=1.0,
        validation_videos=8, lr=0.01, stop_epoch=30,
        ablations={}, curves=[{"epoch": 1, "step": 5, "lr": 0.01, "train_loss": 1.0, "train_clip_top1": 0.5,
                               "seconds": 1.0, "clips_per_second": 8.0}],
        confusion=[[right, VIDEOS - right], [0, 0]], predictions=predictions, seconds=1.0,
    )
    fields.update(values)
    names = {field.name for field in dataclasses.fields(RunResult)}
    run = RunResult(**{name: value for name, value in fields.items() if name in names})
    for name in set(fields) - names:
        setattr(run, name, fields[name])
    return run


def _result(init: dict, runs: list[RunResult], config: EvalConfig, tmp_path: Path) -> EvalResult:
    return EvalResult(out_dir=tmp_path / init["spec"].replace("/", "_"), key="k", config=config, init=init,
                      dataset={"name": "hmdb51"}, class_names=["a", "b"], runs=runs, summary=summarise(runs), seconds=1.0)


def _config(**values) -> EvalConfig:
    return EvalConfig(splits=(1, 2), seeds=(0, 1), lr_trunk_scale=1.0, **values)


def _ablations(time_shuffled: float, frame_repeated: float) -> dict:
    return {"time_shuffled": {"clip_top1": time_shuffled, "video_top1": time_shuffled, "video_top5": 1.0},
            "frame_repeated": {"clip_top1": frame_repeated, "video_top1": frame_repeated, "video_top5": 1.0}}


def _results(config: EvalConfig, tmp_path: Path) -> list[EvalResult]:
    keys = [(split, seed) for split in (1, 2) for seed in (0, 1)]
    scratch = [_run(split, seed, 5, ablations=_ablations(0.25, 0.25)) for split, seed in keys]
    distinit = [_run(split, seed, 9 + seed, ablations=_ablations(0.30, 0.25), failed_test_videos=1, trunk_lr_scale=0.1)
                for split, seed in keys]
    control = [_run(split, seed, 5) for split, seed in keys]
    return [_result(SCRATCH, scratch, config, tmp_path), _result(DISTINIT, distinit, config, tmp_path),
            _result(CONTROL, control, config, tmp_path)]


def _overlaps() -> list[dict]:
    none = {"videos": {"source": "none", "dataset": None, "targets_dir": None, "count": 0}, "test_overlap": 0,
            "test_overlap_by_split": {"1": 0, "2": 0}, "allow_test_overlap": True}
    seen = {"videos": {"source": "checkpoint provenance", "dataset": "hmdb51", "targets_dir": "t", "count": 120},
            "test_overlap": 7, "test_overlap_by_split": {"1": 3, "2": 4}, "allow_test_overlap": True}
    return [none, seen, {**seen, "test_overlap": 0, "test_overlap_by_split": {"1": 0, "2": 0}}]


def test_report_has_paired_differences_lr_scale_failures_ablations_and_overlap(tmp_path):
    config = _config(allow_test_overlap=True)
    results = _results(config, tmp_path)
    labels = unique_labels([init_label(result) for result in results])
    assert labels == ["scratch [r2plus1d_18 tiny]", "DistInit [r2plus1d_18 tiny]",
                      "DistInit, shuffled targets (control) [r2plus1d_18 tiny]"]
    differences = [None] + [difference_against(result.runs, results[0].runs, resamples=2000) for result in results[1:]]
    # DistInit: +4 videos of 20 (seed 0) and +5 (seed 1) over scratch on both splits -> +22.5 points
    assert differences[1].mean == pytest.approx(22.5) and differences[1].per_seed == pytest.approx({"0": 20.0, "1": 25.0})
    assert differences[2].mean == 0.0 and (differences[2].low, differences[2].high) == (0.0, 0.0)
    table = results_table(labels, results, differences)
    write_report(tmp_path, config, labels, results, table, differences, _overlaps())
    report = (tmp_path / "RESULTS.md").read_text()
    assert "| init | lr, epoch kept | trunk lr scale | per-clip top-1 | video top-1 | video top-5 | Δ video top-1 vs " \
           "scratch [95% CI] | failed test videos |" in report
    d = differences[1]
    assert f"| DistInit [r2plus1d_18 tiny] | lr 0.01, epoch 30 of 30 | 0.1 | 47.5 ± 2.9 | 47.5 ± 2.9 | 100.0 ± 0.0 | " \
           f"+22.5 [{d.low:+.1f}, {d.high:+.1f}] | 4 |" in report
    assert "| scratch [r2plus1d_18 tiny] | lr 0.01, epoch 30 of 30 | 1 | 25.0 ± 0.0 | 25.0 ± 0.0 | 100.0 ± 0.0 | reference | 0 |" in report
    assert "trunk lr scale per row" in report  # 0.1 and 1.0: not one schedule
    assert "seed 0: +20.0, seed 1: +25.0" in report
    # the overlap: stated per init, and a warning for the init that saw test videos
    assert "**Warning: DistInit [r2plus1d_18 tiny] was pretrained on videos that match 7 videos of the test lists" in report
    assert "| DistInit [r2plus1d_18 tiny] | hmdb51 | 120 | 7 (split 1: 3, split 2: 4)" in report
    assert "| scratch [r2plus1d_18 tiny] | none (no video) | 0 | 0 |" in report
    # temporal ablations: DistInit drops 17.5 ± 2.9 on time-shuffled clips, 22.5 ± 2.9 on a repeated frame
    assert "| DistInit [r2plus1d_18 tiny] | 47.5 ± 2.9 | 30.0 ± 0.0 | 17.5 ± 2.9 | 25.0 ± 0.0 | 22.5 ± 2.9 |" in report
    assert "| DistInit, shuffled targets (control) [r2plus1d_18 tiny] | 25.0 ± 0.0 | n/a | n/a | n/a | n/a |" in report
    saved = json.loads((tmp_path / "results.json").read_text())
    row = saved["inits"][1]
    assert row["paired_difference_vs_scratch"]["mean"] == pytest.approx(22.5)
    assert row["trunk_lr_scale"] == [0.1] and row["failed_test_videos"] == 4 and row["pretraining"]["test_overlap"] == 7
    assert saved["inits"][0]["paired_difference_vs_scratch"] is None and saved["reference"] == "scratch"
    assert row["summary"]["ablations"]["time_shuffled"]["video_top1"]["drop"]["mean"] == pytest.approx(0.175)


def test_without_scratch_the_paired_column_is_left_out_and_the_report_says_so(tmp_path):
    config = _config()
    results = _results(config, tmp_path)[1:]
    labels = [init_label(result) for result in results]
    table = results_table(labels, results, None)
    assert "Δ" not in table
    write_report(tmp_path, config, labels, results, table, None, _overlaps()[1:])
    assert "No scratch row, so no paired differences" in (tmp_path / "RESULTS.md").read_text()


def test_fields_older_runs_lack_are_reported_as_not_available(tmp_path):
    config = _config()
    runs = [_run(1, 0, 5), _run(2, 0, 6)]
    for run in runs:
        del run.failed_test_videos, run.failed_videos, run.trunk_lr_scale, run.ablations
    result = _result(SCRATCH, runs, config, tmp_path)
    table = results_table(["scratch"], [result], [None])
    assert table.splitlines()[2] == "| scratch | lr 0.01, epoch 30 of 30 | 1 | 27.5 ± 3.5 | 27.5 ± 3.5 | 100.0 ± 0.0 | reference | n/a |"
    write_report(tmp_path, config, ["scratch"], [result], table, [None], [None])
    report = (tmp_path / "RESULTS.md").read_text()
    assert "| scratch | n/a | n/a | n/a |" in report and "No run recorded test-time ablations" in report
    # scratch's trunk scale falls back to the config's rule: 1.0 (lr_trunk_scale=1.0 here, 1.0 for scratch anyway)
    assert "trunk lr x1.0, the same for every init" in report


def test_scratch_goes_first_and_labels_stay_apart():
    assert ordered_inits(["runs/a", "inflated:resnet18", "scratch"]) == ["scratch", "runs/a", "inflated:resnet18"]
    assert ordered_inits(["runs/a", "runs/a", "inflated:resnet18"]) == ["runs/a", "inflated:resnet18"]
    assert unique_labels(["DistInit [x]", "DistInit [x]", "scratch [x]"]) == ["DistInit [x]", "DistInit [x] #2",
                                                                               "scratch [x]"]


def test_compare_runs_scratch_first_and_reports_the_overlap(tmp_path, monkeypatch):
    layout = make_hmdb51(tmp_path / "hmdb")  # placeholder videos: listing and split lists only
    config = EvalConfig(root=str(layout.root), splits_dir=str(layout.splits_dir), splits=(1,), seeds=(0, 1))
    described = {"runs/a.pt": {**DISTINIT, "distill_provenance": {"pretraining_videos": {"count": 2, "names": ["x", "y"]}}}}
    monkeypatch.setattr(compare_module, "resolve_init", lambda init, **_: type("I", (), {"description": described[init]}))
    ran = []

    def fake_run_eval(init_config, show_progress=False, chosen=None):
        ran.append((init_config.init, init_config.student, init_config.lr_trunk_scale))
        init = SCRATCH if init_config.init == "scratch" else described[init_config.init]
        right = 5 if init_config.init == "scratch" else 15
        return _result(init, [_run(1, seed, right) for seed in (0, 1)], init_config, tmp_path)

    monkeypatch.setattr(compare_module, "run_eval", fake_run_eval)
    comparison = compare(config, ["runs/a.pt", "scratch"], tmp_path / "compare")
    assert ran == [("scratch", "r2plus1d_18", 1.0), ("runs/a.pt", None, 1.0)]
    assert comparison.labels[0].startswith("scratch") and comparison.differences[1].mean == pytest.approx(50.0)
    assert [report["test_overlap"] for report in comparison.overlaps] == [0, 0]
    report = (tmp_path / "compare" / "RESULTS.md").read_text()
    assert ("| DistInit [r2plus1d_18 tiny] | n/a | 2 | 0 (split 1: 0); 0 by name, 0 same content, 0 same source video; "
            "content not checked |") in report
    low, high = comparison.differences[1].low, comparison.differences[1].high
    assert 25 <= low < 50 < high <= 75 and f"+50.0 [{low:+.1f}, {high:+.1f}]" in comparison.table


def test_eval_table_states_the_pretraining_and_ablations(tmp_path):
    config = _config()
    runs = [_run(1, 0, 10, ablations=_ablations(0.3, 0.2))]
    result = _result({**DISTINIT, "pretraining": _overlaps()[1]}, runs, config, tmp_path)
    text = format_table(result)
    assert "time-shuffled test clips: video top-1 30.0 ± 0.0, drop 20.0 ± 0.0 (1 runs)" in text
    assert "pretraining: hmdb51, 120 videos; test videos among them: 7 (split 1: 3, split 2: 4)" in text


def _fake_runs(monkeypatch, described: dict, right: dict):
    """compare's run_eval replaced by one returning `right[init]` correct videos of 20 per run; returns the calls."""
    ran = []

    def fake_run_eval(init_config, show_progress=False, chosen=None):
        ran.append((init_config.init, init_config.student, init_config.width))
        if init_config.init == "scratch":
            init = {"kind": "scratch", "spec": "scratch",
                    "architecture": {"name": init_config.student, "width": init_config.width}}
        else:
            init = described[init_config.init]
        runs = [_run(1, seed, right[(init_config.init, init["architecture"]["name"])]) for seed in (0, 1)]
        return _result(init, runs, init_config, Path(str(init_config.init).replace(":", "_")))

    monkeypatch.setattr(compare_module, "run_eval", fake_run_eval)
    return ran


def test_compare_refuses_mixed_architectures(tmp_path, monkeypatch):
    """Every Δ is against scratch of the same network: `scratch` becomes one row per architecture, each init is paired
    with its own, and a --student that would pair an init with scratch of another network is refused in one line."""
    layout = make_hmdb51(tmp_path / "hmdb")
    config = EvalConfig(root=str(layout.root), splits_dir=str(layout.splits_dir), splits=(1,), seeds=(0, 1))
    described = {"runs/a.pt": SEEN_NOTHING, "inflated:efficientnet_lite0": {
        "kind": "inflated", "spec": "inflated:efficientnet_lite0",
        "architecture": {"name": "efficientnet_lite0_3d", "width": "full"}}}
    monkeypatch.setattr(compare_module, "resolve_init", lambda init, **_: type("I", (), {"description": described[init]}))
    monkeypatch.chdir(tmp_path)
    right = {("scratch", "r2plus1d_18"): 5, ("runs/a.pt", "r2plus1d_18"): 15,
             ("scratch", "efficientnet_lite0_3d"): 10, ("inflated:efficientnet_lite0", "efficientnet_lite0_3d"): 12}
    ran = _fake_runs(monkeypatch, described, right)
    comparison = compare(config, ["scratch", "inflated:efficientnet_lite0", "runs/a.pt"], tmp_path / "compare")
    assert ran == [("scratch", "efficientnet_lite0_3d", "full"), ("inflated:efficientnet_lite0", None, None),
                   ("scratch", "r2plus1d_18", "tiny"), ("runs/a.pt", None, None)]
    assert comparison.references == [0, 0, 2, 2]
    # inflated against its own scratch (12 vs 10 of 20), DistInit against its own (15 vs 5): never across networks
    assert comparison.differences[1].mean == pytest.approx(10.0) and comparison.differences[3].mean == pytest.approx(50.0)
    assert comparison.differences[0] is None and comparison.differences[2] is None
    assert comparison.table.count("| reference |") == 2
    report = (tmp_path / "compare" / "RESULTS.md").read_text()
    assert "Each Δ is against scratch of the same architecture" in report
    # Asking scratch as one network while an init is another is refused before anything runs.
    ran.clear()
    with pytest.raises(ConfigError) as refused:
        compare(dataclasses.replace(config, student="r2plus1d_18", width="tiny"),
                ["scratch", "inflated:efficientnet_lite0", "runs/a.pt"], tmp_path / "compare2")
    message = str(refused.value)
    assert "\n" not in message and "inflated:efficientnet_lite0 is a efficientnet_lite0_3d full" in message
    assert "drop --student" in message and ran == [] and not (tmp_path / "compare2").exists()
    # Without scratch there is no Δ at all, whatever the architectures.
    comparison = compare(config, ["inflated:efficientnet_lite0", "runs/a.pt"], tmp_path / "compare3")
    assert comparison.differences is None


def test_compare_tunes_each_init_and_runs_the_chosen_values(tmp_path, monkeypatch):
    """With tune_lrs, each row is tuned on validation first, and its runs use the chosen lr and epoch only."""
    from distinit.evaluate.tuning import SplitTuning, Tuning

    layout = make_hmdb51(tmp_path / "hmdb")
    config = EvalConfig(root=str(layout.root), splits_dir=str(layout.splits_dir), splits=(1,), seeds=(0, 1),
                        tune_lrs=(0.001, 0.01), epochs=10)
    described = {"runs/a.pt": SEEN_NOTHING}
    monkeypatch.setattr(compare_module, "resolve_init", lambda init, **_: type("I", (), {"description": described[init]}))
    chosen = {"scratch": (0.01, 9), "runs/a.pt": (0.001, 4)}
    tuned = []

    def fake_tune(init_config, show_progress=False):
        tuned.append(init_config.init)
        lr, epoch = chosen[init_config.init]
        curves = {f"{value:g}": [{"epoch": epoch, "val_video_top1": 0.5 if value == lr else 0.25, "val_loss": 1.0}]
                  for value in init_config.tune_lrs}
        return Tuning([SplitTuning(1, 0, 30, 8, 4, curves, lr, epoch, 0.5)])

    monkeypatch.setattr(compare_module, "tune", fake_tune)
    configs = []
    real_fake = _fake_runs(monkeypatch, described, {("scratch", "r2plus1d_18"): 5, ("runs/a.pt", "r2plus1d_18"): 15})
    wrapped = compare_module.run_eval

    def recording_run_eval(init_config, show_progress=False, chosen=None):
        configs.append((init_config.init, chosen))
        return wrapped(init_config, show_progress)

    monkeypatch.setattr(compare_module, "run_eval", recording_run_eval)
    comparison = compare(config, ["scratch", "runs/a.pt"], tmp_path / "compare")
    assert tuned == ["scratch", "runs/a.pt"] and len(real_fake) == 2
    assert configs == [("scratch", {1: (0.01, 9)}), ("runs/a.pt", {1: (0.001, 4)})]
    report = (tmp_path / "compare" / "RESULTS.md").read_text()
    assert "## Chosen on validation; test chose nothing" in report
    assert "no test score chose anything" in report
    assert "| DistInit [r2plus1d_18 tiny] | 1 | 8 (4) | 0.001: 50.0 (epoch 4), 0.01: 25.0 (epoch 4) | 0.001 | 4 |" in report
    assert comparison.tunings[1].chosen() == {1: (0.001, 4)}


def test_distillation_runs_of_one_recipe_pool_into_one_interval(tmp_path, monkeypatch):
    """Two DistInit checkpoints that differ only in their distillation seed are draws of one recipe: the report gives
    their pooled difference, whose interval resamples distillation runs; a single run is stated as conditional."""
    layout = make_hmdb51(tmp_path / "hmdb")
    config = EvalConfig(root=str(layout.root), splits_dir=str(layout.splits_dir), splits=(1,), seeds=(0, 1))
    recipe = {"frames": 8, "lr": 0.003, "out": "runs/x"}
    provenance = {**SEEN_NOTHING["distill_provenance"], "targets_fingerprint": "f" * 16}
    described = {"runs/a.pt": {**SEEN_NOTHING, "spec": "runs/a.pt", "distill_config": {**recipe, "seed": 0},
                               "distill_provenance": provenance, "distill_step": 90},
                 "runs/b.pt": {**SEEN_NOTHING, "spec": "runs/b.pt", "distill_config": {**recipe, "seed": 1, "out": "y"},
                               "distill_provenance": provenance, "distill_step": 90},
                 # another targets cache, or the same run's other checkpoint: not draws of the recipe
                 "runs/c.pt": {**SEEN_NOTHING, "spec": "runs/c.pt", "distill_config": {**recipe, "seed": 2},
                               "distill_provenance": {**provenance, "targets_fingerprint": "e" * 16}, "distill_step": 90},
                 "runs/a-best.pt": {**SEEN_NOTHING, "spec": "runs/a-best.pt", "distill_config": {**recipe, "seed": 0},
                                    "distill_provenance": provenance, "distill_step": 90}}
    monkeypatch.setattr(compare_module, "resolve_init", lambda init, **_: type("I", (), {"description": described[init]}))
    monkeypatch.chdir(tmp_path)
    _fake_runs(monkeypatch, described, {("scratch", "r2plus1d_18"): 5, ("runs/a.pt", "r2plus1d_18"): 15,
                                        ("runs/b.pt", "r2plus1d_18"): 9, ("runs/c.pt", "r2plus1d_18"): 7,
                                        ("runs/a-best.pt", "r2plus1d_18"): 15})
    comparison = compare(config, ["scratch", "runs/a.pt", "runs/b.pt", "runs/c.pt"], tmp_path / "compare")
    (entry,) = comparison.pooled
    assert entry["rows"] == [1, 2] and entry["difference"].distillation_runs == 2
    assert entry["difference"].mean == pytest.approx((50.0 + 20.0) / 2)
    assert entry["difference"].per_distillation == pytest.approx({"0": 50.0, "1": 20.0})
    report = (tmp_path / "compare" / "RESULTS.md").read_text()
    assert "## DistInit pooled over distillation runs" in report and "conditional on one distillation run" in report
    # One checkpoint alone: its interval is stated as conditional on that one distillation.
    single = compare(config, ["scratch", "runs/a.pt", "runs/a-best.pt"], tmp_path / "compare-one")
    assert single.pooled == [] and "Each DistInit interval is conditional on one distillation run" in (
        tmp_path / "compare-one" / "RESULTS.md").read_text()
