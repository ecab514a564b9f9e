"""What `distinit eval` reports: one RunResult per (split, seed), their spread, results.json, a text table.

Accuracies are fractions in [0, 1]. Spreads are (mean, sample std) from `evaluate.metrics.mean_std`:
- "over_splits": each split's value averaged over seeds, then mean +- std over splits (the paper's number);
- "over_seeds": each seed's value averaged over splits, then mean +- std over seeds (run-to-run spread);
- "over_runs": every (split, seed) run;
- "ablations" (when runs carry test-time temporal ablations): per ablation and metric, the original and
  ablated scores and the drop (original - ablated), each over the runs that have that ablation.
Fields that runs of older code lack (`trunk_lr_scale`, `failed_test_videos`, `ablations`) are read with
`run_value` and reported as "n/a" where absent.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Iterable

from distinit.evaluate.config import EvalConfig
from distinit.evaluate.metrics import mean_std
from distinit.evaluate.overlap import overlap_text
from distinit.pipeline.atomic import atomic_write_text, make_output_folder
from distinit.pipeline.config import config_to_dict

SCHEMA = "distinit-eval-1"
METRICS = ("clip_top1", "video_top1", "video_top5")
METRIC_TITLES = {"clip_top1": "clip top-1", "video_top1": "video top-1", "video_top5": "video top-5"}
# Test-time temporal ablations: the same test clips with their frames shuffled in time, or one frame repeated.
ABLATIONS = ("time_shuffled", "frame_repeated")
ABLATION_TITLES = {"time_shuffled": "time-shuffled", "frame_repeated": "frame-repeated"}


@dataclasses.dataclass
class RunResult:
    split: int
    seed: int
    clip_top1: float  # every test view (clip x crop) scored alone
    video_top1: float  # softmax averaged over a video's views
    video_top5: float
    train_videos: int  # the train part (the split's train list less its validation part)
    validation_videos: int  # held out of training for tuning (evaluate.validation); never scored here
    lr: float  # the classifier's learning rate (the trunk's is lr x trunk_lr_scale): given, or chosen on validation
    stop_epoch: int  # the epoch whose weights were scored (of the schedule's `epochs`)
    test_videos: int  # in the test list, those that failed to decode included
    test_views: int  # test_videos x views per video: the clip top-1 denominator
    failed_videos: list[str]  # test videos that did not decode, counted as wrong (their views too)
    failed_test_videos: int  # len(failed_videos)
    trunk_lr_scale: float  # the trunk's learning rate / the classifier's; 0.0 for a linear probe (frozen trunk)
    # evaluate.ablations: {"time_shuffled" | "frame_repeated": {"clip_top1", "video_top1", "video_top5"}}, the same
    # model on the same test views reordered in time; {} when the config's temporal_ablations is off
    ablations: dict[str, dict[str, float]]
    curves: list[dict[str, float]]  # per epoch: epoch, step, lr, train_loss, train_clip_top1, seconds, clips_per_second
    confusion: list[list[int]]  # video-level, row = true class, column = predicted
    predictions: list[dict[str, Any]]  # per test video: id, label, predicted, confidence
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunResult":
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{name: values[name] for name in names})


@dataclasses.dataclass
class EvalResult:
    out_dir: Path
    key: str
    config: EvalConfig
    init: dict[str, Any]  # from evaluate.initialization: kind, spec, architecture, checkpoint sha256 / source
    dataset: dict[str, Any]  # name, root, splits_dir, manifest_sha256, num_classes
    class_names: list[str]
    runs: list[RunResult]
    summary: dict[str, Any]
    seconds: float

    def run(self, split: int, seed: int) -> RunResult:
        for run in self.runs:
            if run.split == split and run.seed == seed:
                return run
        raise KeyError(f"no run for split {split}, seed {seed}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "key": self.key,
            "config": config_to_dict(self.config),
            "init": self.init,
            "dataset": self.dataset,
            "class_names": self.class_names,
            "runs": [run.to_dict() for run in self.runs],
            "summary": self.summary,
            "seconds": self.seconds,
        }


def _spread(values_by_name: dict[Any, float]) -> dict[str, Any]:
    mean, std = mean_std(list(values_by_name.values()))
    return {"mean": mean, "std": std, "values": {str(name): value for name, value in values_by_name.items()}}


def _grouped_means(runs: list[RunResult], metric: str, group: str) -> dict[int, float]:
    groups: dict[int, list[float]] = {}
    for run in runs:
        groups.setdefault(getattr(run, group), []).append(getattr(run, metric))
    return {name: sum(values) / len(values) for name, values in groups.items()}


def run_value(run: Any, name: str, default: Any = None) -> Any:
    """A RunResult field that runs written by older code may lack."""
    return getattr(run, name, default)


def failed_test_count(run: Any) -> int | None:
    """Test videos of a run that did not decode (scored as wrong); None when the run does not say."""
    value = run_value(run, "failed_test_videos")
    if value is None:
        value = run_value(run, "failed_videos")
    if value is None:
        return None
    return int(value) if isinstance(value, (int, float)) else len(value)


def trunk_lr_scale(run: Any, config: EvalConfig, pretrained: bool) -> float:
    """The trunk's learning-rate multiplier a run used; the config's rule where the run does not record it."""
    value = run_value(run, "trunk_lr_scale")
    return float(value) if value is not None else config.trunk_scale(pretrained)


def ablation_summary(runs: Iterable[Any]) -> dict[str, Any]:
    """{ablation: {"runs": n, metric: {"original", "ablated", "drop"}}} over the runs that have each ablation."""
    summary = {}
    for ablation in ABLATIONS:
        scored = [(run, (run_value(run, "ablations") or {}).get(ablation)) for run in runs]
        scored = [(run, scores) for run, scores in scored if scores]
        if not scored:
            continue
        entry: dict[str, Any] = {"runs": len(scored)}
        for metric in METRICS:
            pairs = {f"{run.split}/{run.seed}": (getattr(run, metric), scores[metric])
                     for run, scores in scored if scores.get(metric) is not None}
            if pairs:
                entry[metric] = {
                    "original": _spread({name: original for name, (original, _) in pairs.items()}),
                    "ablated": _spread({name: ablated for name, (_, ablated) in pairs.items()}),
                    "drop": _spread({name: original - ablated for name, (original, ablated) in pairs.items()}),
                }
        summary[ablation] = entry
    return summary


def summarise(runs: Iterable[RunResult]) -> dict[str, Any]:
    """The spreads of the module docstring, for each metric."""
    runs = list(runs)
    summary = {
        "over_splits": {metric: _spread(_grouped_means(runs, metric, "split")) for metric in METRICS},
        "over_seeds": {metric: _spread(_grouped_means(runs, metric, "seed")) for metric in METRICS},
        "over_runs": {metric: _spread({f"{run.split}/{run.seed}": getattr(run, metric) for run in runs})
                      for metric in METRICS},
    }
    ablations = ablation_summary(runs)
    if ablations:
        summary["ablations"] = ablations
    return summary


def write_results(result: EvalResult) -> Path:
    path = Path(result.out_dir) / "results.json"
    atomic_write_text(path, json.dumps(result.to_dict(), indent=1, sort_keys=True, default=str) + "\n")
    return path


def write_report_folder(result: EvalResult, folder: str | Path) -> Path:
    """`distinit eval --report FOLDER` (make's eval-hmdb / eval-ucf): FOLDER/results.json (the run's results plus
    `results_folder`, where the cached runs live) and FOLDER/RESULTS.txt (the table), at a fixed place."""
    folder = Path(folder)
    make_output_folder(folder, option="--report")
    record = {**result.to_dict(), "results_folder": str(result.out_dir)}
    atomic_write_text(folder / "RESULTS.txt", format_table(result) + "\n")
    path = folder / "results.json"
    atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True, default=str) + "\n")  # last: the stage's output
    return path


def format_table(result: EvalResult) -> str:
    """A short plain-text table, in percent: one row per (split, seed), then mean +- std."""
    header = f"{'split':>5} {'seed':>4}  " + "  ".join(f"{METRIC_TITLES[m]:>13}" for m in METRICS)
    header += f"  {'lr':>7} {'epoch':>5}"
    lines = [f"{result.dataset.get('name')} / {result.init.get('spec')}" + (" (linear probe)" if result.config.linear_probe else ""),
             f"a schedule of {result.config.epochs} epochs, each run kept at its epoch; trained on each split's train "
             f"list less {result.config.val_fraction:g} held out for validation"
             + (" (lr and epoch chosen on it)" if result.config.tune_lrs else ""),
             header]
    for run in sorted(result.runs, key=lambda run: (run.split, run.seed)):
        cells = "  ".join(f"{100 * getattr(run, metric):13.1f}" for metric in METRICS)
        lr, epoch = run_value(run, "lr"), run_value(run, "stop_epoch")
        lines.append(f"{run.split:>5} {run.seed:>4}  {cells}  {'n/a' if lr is None else f'{lr:g}':>7} {epoch or 'n/a':>5}")
    spreads = [("over splits", "over_splits")]
    if len(result.config.seeds) > 1:
        spreads.append(("over seeds", "over_seeds"))
    for title, name in spreads:
        cells = "  ".join(
            f"{100 * result.summary[name][m]['mean']:6.1f} ± {100 * result.summary[name][m]['std']:4.1f}" for m in METRICS
        )
        lines.append(f"{title:>11}  {cells}")
    for ablation, entry in (result.summary.get("ablations") or {}).items():
        if "video_top1" in entry:
            ablated, drop = entry["video_top1"]["ablated"], entry["video_top1"]["drop"]
            lines.append(f"{ABLATION_TITLES.get(ablation, ablation)} test clips: video top-1 "
                         f"{100 * ablated['mean']:.1f} ± {100 * ablated['std']:.1f}, drop {100 * drop['mean']:.1f} ± "
                         f"{100 * drop['std']:.1f} ({entry['runs']} runs)")
    pretraining = result.init.get("pretraining")
    if pretraining:
        data, videos, overlap = overlap_text(pretraining)
        lines.append(f"pretraining: {data}, {videos} videos; test videos among them: {overlap}")
    return "\n".join(lines)
