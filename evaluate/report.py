"""A comparison's RESULTS.md and results.json: the paper-style table, then what a reader needs to trust it.

Tables, in this order: the main one (accuracies mean ± std over runs, the trunk learning-rate scale, the
paired difference against scratch with its 95% bootstrap interval, failed test videos); the paired
differences per seed; what each init was pretrained on and how many test videos that saw; test-time
temporal ablations. Values a run does not record are "n/a". Accuracies in percent.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from distinit.evaluate.config import EvalConfig
from distinit.evaluate.metrics import mean_std
from distinit.evaluate.overlap import overlap_text
from distinit.evaluate.plots import plot_confusion, plot_curves
from distinit.evaluate.results import ABLATIONS, ABLATION_TITLES, METRICS, EvalResult, failed_test_count, run_value, trunk_lr_scale
from distinit.evaluate.statistics import PairedDifference
from distinit.pipeline.atomic import atomic_write_text
from distinit.pipeline.provenance import write_provenance

logger = logging.getLogger(__name__)

NOT_AVAILABLE = "n/a"


def spread(result: EvalResult, metric: str) -> tuple[float, float]:
    """Mean ± sample std over every (split, seed) run, in percent."""
    values = result.summary["over_runs"][metric]
    return 100 * values["mean"], 100 * values["std"]


def pretrained(init: dict[str, Any]) -> bool:
    """Whether an init's trunk starts from learned weights (as evaluate.initialization decides)."""
    kind = init.get("kind")
    return kind == "checkpoint" or (kind == "inflated" and not str(init.get("spec", "")).endswith(":random"))


def trunk_scales(result: EvalResult) -> list[float]:
    return sorted({trunk_lr_scale(run, result.config, pretrained(result.init)) for run in result.runs})


def failed_total(result: EvalResult) -> int | None:
    """Test videos that failed to decode, summed over the runs; None when a run does not say."""
    counts = [failed_test_count(run) for run in result.runs]
    return None if any(count is None for count in counts) else sum(counts)


def failed_text(result: EvalResult) -> str:
    total = failed_total(result)
    return NOT_AVAILABLE if total is None else str(total)


def difference_text(difference: PairedDifference | None, is_reference: bool) -> str:
    if is_reference:
        return "reference"
    if difference is None:
        return NOT_AVAILABLE
    return f"{difference.mean:+.1f} [{difference.low:+.1f}, {difference.high:+.1f}]"


def is_reference(row: int, references: Sequence[int | None] | None) -> bool:
    """Whether row `row` is a scratch row other rows are paired against (row 0 when `references` is not given)."""
    return row == 0 if references is None else references[row] == row


def chosen_text(result: EvalResult) -> str:
    """The learning rate and the epoch kept that the runs used ("lr 0.003, epoch 24 of 30")."""
    pairs = sorted({(run_value(run, "lr"), run_value(run, "stop_epoch")) for run in result.runs}, key=str)
    if any(lr is None for lr, _ in pairs):
        return NOT_AVAILABLE
    return "; ".join(f"lr {lr:g}, epoch {epoch} of {result.config.epochs}" for lr, epoch in pairs)


def results_table(labels: Sequence[str], results: Sequence[EvalResult],
                  differences: Sequence[PairedDifference | None] | None = None,
                  references: Sequence[int | None] | None = None) -> str:
    """The main table; `differences` (one per row) adds the paired column, each row against the scratch row of its
    architecture (`references`: per row the index of that scratch row; default: row 0 for every row)."""
    paired = differences is not None
    titles = ["init", "lr, epoch kept", "trunk lr scale", "per-clip top-1", "video top-1", "video top-5"]
    titles += ["Δ video top-1 vs scratch [95% CI]"] if paired else []
    titles += ["failed test videos"]
    lines = ["| " + " | ".join(titles) + " |", "|" + " --- |" * len(titles)]
    for row, (label, result) in enumerate(zip(labels, results)):
        cells = [label, chosen_text(result), ", ".join(f"{scale:g}" for scale in trunk_scales(result))]
        cells += ["{:.1f} ± {:.1f}".format(*spread(result, metric)) for metric in METRICS]
        cells += [difference_text(differences[row], is_reference(row, references))] if paired else []
        cells += [failed_text(result)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def differences_table(labels: Sequence[str], differences: Sequence[PairedDifference | None],
                      references: Sequence[int | None] | None = None) -> str:
    lines = ["| init | mean Δ (points) | 95% interval | std over runs | per seed | runs, paired videos |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row, (label, difference) in enumerate(zip(labels, differences)):
        if is_reference(row, references) or (references is not None and references[row] is None):
            continue
        if difference is None:
            lines.append(f"| {label} | {' | '.join([NOT_AVAILABLE] * 5)} |")
            continue
        per_seed = ", ".join(f"seed {seed}: {value:+.1f}" for seed, value in difference.per_seed.items())
        lines.append(f"| {label} | {difference.mean:+.1f} | [{difference.low:+.1f}, {difference.high:+.1f}] | "
                     f"{difference.std_over_runs:.1f} | {per_seed} | {difference.runs}, {difference.videos} |")
    return "\n".join(lines)


def overlap_table(labels: Sequence[str], overlaps: Sequence[dict[str, Any] | None]) -> str:
    lines = ["| init | pretraining data | pretraining videos | of them in the test lists |", "| --- | --- | --- | --- |"]
    for label, report in zip(labels, overlaps):
        lines.append(f"| {label} | " + " | ".join(overlap_text(report)) + " |")
    return "\n".join(lines)


def _points(values: list[float]) -> str:
    mean, std = mean_std(values)
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def ablation_cells(result: EvalResult, ablation: str) -> list[str]:
    """[ablated video top-1, drop] over the runs that have the ablation, mean ± std in percent."""
    pairs = [(run.video_top1, (run_value(run, "ablations") or {}).get(ablation) or {}) for run in result.runs]
    pairs = [(original, scores["video_top1"]) for original, scores in pairs if scores.get("video_top1") is not None]
    if not pairs:
        return [NOT_AVAILABLE, NOT_AVAILABLE]
    return [_points([ablated for _, ablated in pairs]), _points([original - ablated for original, ablated in pairs])]


def ablation_table(labels: Sequence[str], results: Sequence[EvalResult]) -> str | None:
    """Video top-1 on the original and the ablated test clips; None when no run has an ablation."""
    if not any(run_value(run, "ablations") for result in results for run in result.runs):
        return None
    titles = ["init", "original"]
    for ablation in ABLATIONS:
        titles += [ABLATION_TITLES[ablation], f"drop ({ABLATION_TITLES[ablation]})"]
    lines = ["| " + " | ".join(titles) + " |", "|" + " --- |" * len(titles)]
    for label, result in zip(labels, results):
        cells = [label, _points([run.video_top1 for run in result.runs])]
        for ablation in ABLATIONS:
            cells += ablation_cells(result, ablation)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def header_text(config: EvalConfig, results: Sequence[EvalResult], tuned: bool = False) -> str:
    scales = sorted({scale for result in results for scale in trunk_scales(result)})
    schedule = "" if config.linear_probe else (
        f", trunk lr x{scales[0]}, the same for every init" if len(scales) == 1 else ", trunk lr scale per row")
    learning_rate = ("lr and epoch kept chosen per init on validation" if tuned else f"lr {config.lr}")
    seeds = "" if len(config.seeds) >= 3 else (
        f" **Only {len(config.seeds)} seed{'s' if len(config.seeds) > 1 else ''} per split, as asked: the intervals "
        "hold little or no seed-to-seed spread (three or more are the default).**")
    return (
        f"# {config.data}: scratch vs inflated vs DistInit, one architecture per comparison\n\n"
        f"Splits {', '.join(map(str, config.splits))}, seeds {', '.join(map(str, config.seeds))} "
        f"({len(results[0].runs)} runs per init), a schedule of {config.epochs} epochs ({config.optimizer}, "
        f"{learning_rate}{schedule}), {config.frames}x{config.crop}² clips, {config.test_clips} test clips per video"
        f"{' x 3 crops' if config.three_crop else ''}{', linear probe' if config.linear_probe else ''}. "
        f"Every run trains on its split's train list less a validation part ({config.val_fraction:g} of it, "
        f"{'whole source groups' if config.val_groups == 'source' else 'single videos'}, stratified by class, "
        f"divided once with seed {config.val_seed}). "
        f"Accuracies in %, mean ± sample std over the runs. Test videos that failed to decode count as wrong. "
        f"Each Δ is against scratch of the same architecture and clip shape.{seeds}\n\n"
    )


def tuning_text(labels: Sequence[str], tunings: Sequence[Any] | None) -> str:
    """What validation chose for each row and split, and the statement that test chose nothing."""
    if not tunings or all(tuning is None for tuning in tunings):
        return ("\n## Settings\n\nNo tuning (tune_lrs is empty): every init used the config's learning rate and "
                "its last epoch, chosen before any test score was seen.\n")
    lines = ["| init | split | validation videos (source groups) | validation video top-1 at each lr (its best epoch) "
             "| chosen lr | epoch kept |", "| --- | --- | --- | --- | --- | --- |"]
    for label, tuning in zip(labels, tunings):
        if tuning is None:
            lines.append(f"| {label} | | not tuned | | | |")
            continue
        for entry in tuning.splits:
            tried = ", ".join(f"{lr}: {100 * best['val_video_top1']:.1f} (epoch {best['epoch']})"
                              for lr, best in entry.best_by_lr().items())
            lines.append(f"| {label} | {entry.split} | {entry.validation_videos} ({entry.validation_groups}) | {tried} | "
                         f"{entry.lr:g} | {entry.stop_epoch} |")
    return (
        "\n## Chosen on validation; test chose nothing\n\n"
        "Each init's learning rate and the epoch to keep were chosen on each split's own validation part (part of "
        "that split's train list, held out of training in every run; the first seed), by "
        "validation video top-1 (ties: lower validation loss). The test lists were scored once per (split, seed), "
        "with those values, after they were chosen; no test score chose anything (evaluate/tuning.py).\n\n"
        + "\n".join(lines) + "\n"
    )


def overlap_warnings(labels: Sequence[str], overlaps: Sequence[dict[str, Any] | None]) -> str:
    lines = []
    for label, report in zip(labels, overlaps):
        if not report:
            continue
        if report.get("test_overlap"):
            lines.append(f"**Warning: {label} was pretrained on videos that match {report['test_overlap']} videos of the "
                         "test lists it is scored on, by name, content or source video (allowed by allow_test_overlap); "
                         "its scores are not clean test scores.**")
        elif report.get("test_overlap") is None and report.get("allow_test_overlap"):
            lines.append(f"**Warning: {label}: its pretraining videos are unknown, so overlap with the test lists was "
                         "not checked (allowed by allow_test_overlap).**")
    return "".join(line + "\n\n" for line in lines)


def pooled_text(labels: Sequence[str], pooled: Sequence[dict[str, Any]] | None) -> str:
    """Rows distilled with one recipe and several seeds, pooled into one interval over distillation runs; or the
    statement that every interval is conditional on the one distillation run it finetunes."""
    if not pooled:
        if not any("DistInit" in label for label in labels):
            return ""
        return ("\nEach DistInit interval is conditional on one distillation run: it resamples eval seeds and test "
                "source groups, not the distillation (distil again with another `seed` and list both checkpoints in "
                "--inits to pool them).\n")
    lines = ["\n## DistInit pooled over distillation runs (video top-1)\n",
             "| distillation runs (rows) | mean Δ (points) | 95% interval | per distillation run |", "| --- | --- | --- | --- |"]
    for entry in pooled:
        difference = entry["difference"]
        per_run = ", ".join(f"{value:+.1f}" for value in difference.per_distillation.values())
        rows = "; ".join(labels[index] for index in entry["rows"])
        lines.append(f"| {difference.distillation_runs} ({rows}) | {difference.mean:+.1f} | "
                     f"[{difference.low:+.1f}, {difference.high:+.1f}] | {per_run} |")
    return "\n".join(lines) + ("\n\nThis interval resamples distillation runs, then eval seeds, then test source "
                              "groups; the per-row intervals above are each conditional on one distillation run.\n")


def paired_text(labels: Sequence[str], differences: Sequence[PairedDifference | None] | None,
                references: Sequence[int | None] | None = None,
                pooled: Sequence[dict[str, Any]] | None = None) -> str:
    if differences is None:
        return ("\n\nNo scratch row, so no paired differences: add `scratch` to --inits to get each init's "
                "difference against it.\n")
    first = next((difference for difference in differences if difference is not None), None)
    resamples = first.resamples if first is not None else 0
    units = ("source groups (clips cut from one source video go together: UCF-101 gXX, HMDB-51 source video)"
             if first is not None and first.dataset else "test videos")
    return (
        "\n\nΔ: the paired difference in video top-1 against scratch of the same architecture on the same split and "
        "seed (percentage points, per test video), mean over splits of the mean over seeds, with a 95% bootstrap "
        f"interval ({resamples} resamples: per split, one resample of its test {units} shared by all its seeds, "
        "and its seeds with replacement; splits fixed; evaluate/statistics.py).\n"
        + pooled_text(labels, pooled) + "\n"
        "## Paired differences against scratch (video top-1)\n\n" + differences_table(labels, differences, references)
        + "\n"
    )


def write_report(out_dir: Path, config: EvalConfig, labels: Sequence[str], results: Sequence[EvalResult], table: str,
                 differences: Sequence[PairedDifference | None] | None = None,
                 overlaps: Sequence[dict[str, Any] | None] | None = None, *, tunings: Sequence[Any] | None = None,
                 references: Sequence[int | None] | None = None, pooled: Sequence[dict[str, Any]] | None = None) -> None:
    """RESULTS.md, results.json, curves.png, confusion.png and provenance.json in `out_dir`."""
    overlaps = list(overlaps) if overlaps is not None else [result.init.get("pretraining") for result in results]
    best = max(range(len(results)), key=lambda index: spread(results[index], "video_top1")[0])
    confusion = np.sum([np.asarray(run.confusion) for run in results[best].runs], axis=0)
    plot_confusion(confusion, results[best].class_names, f"{labels[best]}: video-level, all runs", out_dir / "confusion.png")
    plot_curves(labels, results, out_dir / "curves.png")
    ablations = ablation_table(labels, results)
    sections = [
        header_text(config, results, tuned=bool(tunings) and any(tuning is not None for tuning in tunings)),
        overlap_warnings(labels, overlaps), table, paired_text(labels, differences, references, pooled),
        tuning_text(labels, tunings),
        "\n## Pretraining data and overlap with the test lists\n\nPretraining videos matched against the test lists "
        f"of split(s) {', '.join(map(str, config.splits))} by file name, by file content (sha256, where the checkpoint "
        "records it) and by source video (another clip of the same source; evaluate/overlap.py).\n\n"
        + overlap_table(labels, overlaps) + "\n",
        "\n## Test-time temporal ablations (video top-1, %)\n\n" + (
            ablations + "\n" if ablations else "No run recorded test-time ablations (time-shuffled, frame-repeated).\n"),
        "\n![training curves](curves.png)\n\n![confusion matrix of the best init](confusion.png)\n",
    ]
    atomic_write_text(out_dir / "RESULTS.md", "".join(sections))
    rows = []
    for row, (label, result) in enumerate(zip(labels, results)):
        difference = differences[row] if differences is not None else None
        rows.append({
            "label": label, "init": result.init, "results_dir": str(result.out_dir), "summary": result.summary,
            "trunk_lr_scale": trunk_scales(result), "failed_test_videos": failed_total(result),
            "pretraining": overlaps[row],
            "paired_difference_vs_scratch": difference.to_dict() if difference is not None else None,
            "reference_row": None if references is None else references[row],
            "tuning": tunings[row].to_dict() if tunings and tunings[row] is not None else None,
        })
    summary = {"config": dataclasses.asdict(config), "reference": "scratch" if differences is not None else None,
               "inits": rows, "pooled_distillations": [
                   {"rows": entry["rows"], "labels": [labels[index] for index in entry["rows"]],
                    "paired_difference_vs_scratch": entry["difference"].to_dict()} for entry in pooled or []]}
    atomic_write_text(out_dir / "results.json", json.dumps(summary, indent=1, sort_keys=True, default=str) + "\n")
    write_provenance(out_dir, config, stage="compare", inits=[result.init for result in results])
