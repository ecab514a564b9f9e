"""`distinit compare`: scratch vs inflated vs DistInit on the same data, splits, seeds and schedule.

Each init is one `run_eval` with the same EvalConfig but its `init` (finished runs are cached by
`run_eval`'s key, so re-running a comparison only computes what is new). The comparison folder gets
RESULTS.md (the paper-style table), results.json and PNG plots.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from evaluate.config import EvalConfig
from evaluate.finetune import run_eval
from evaluate.initialization import resolve_init
from evaluate.plots import plot_confusion, plot_curves
from evaluate.results import METRICS, EvalResult
from pipeline.atomic import atomic_write_text
from pipeline.errors import ConfigError
from pipeline.provenance import write_provenance

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Comparison:
    out_dir: Path
    labels: list[str]
    results: list[EvalResult]
    table: str


def init_label(result: EvalResult) -> str:
    init = result.init
    architecture = init.get("architecture") or {}
    shape = f"{architecture.get('name', '?')}" + (" tiny" if architecture.get("width") == "tiny" else "")
    kind = {"checkpoint": "DistInit", "scratch": "scratch", "inflated": "inflated"}.get(init.get("kind"), init.get("kind"))
    if init.get("kind") == "inflated":
        kind = f"inflated ({init.get('spec', '').split(':', 1)[-1].split('@')[0]})"  # inflated:<2d model>[@file]
    return f"{kind} [{shape}]"


def scratch_architecture(inits: Sequence[str], config: EvalConfig) -> tuple[str | None, str | None]:
    """Scratch is trained as the same architecture as the DistInit checkpoint unless --student is given."""
    if config.student is not None:
        return config.student, config.width
    for init in inits:
        if init != "scratch" and not init.startswith("inflated:"):
            architecture = resolve_init(init).description.get("architecture") or {}
            return architecture.get("name"), architecture.get("width")
    return None, config.width


def spread(result: EvalResult, metric: str) -> tuple[float, float]:
    """Mean ± sample std over every (split, seed) run, in percent."""
    values = result.summary["over_runs"][metric]
    return 100 * values["mean"], 100 * values["std"]


def results_table(labels: Sequence[str], results: Sequence[EvalResult]) -> str:
    lines = ["| init | per-clip top-1 | video top-1 | video top-5 |", "| --- | --- | --- | --- |"]
    for label, result in zip(labels, results):
        cells = " | ".join("{:.1f} ± {:.1f}".format(*spread(result, metric)) for metric in METRICS)
        lines.append(f"| {label} | {cells} |")
    return "\n".join(lines)


def write_report(out_dir: Path, config: EvalConfig, labels, results, table: str) -> None:
    best = max(range(len(results)), key=lambda index: spread(results[index], "video_top1")[0])
    confusion = np.sum([np.asarray(run.confusion) for run in results[best].runs], axis=0)
    plot_confusion(confusion, results[best].class_names, f"{labels[best]}: video-level, all runs", out_dir / "confusion.png")
    plot_curves(labels, results, out_dir / "curves.png")
    runs = len(results[0].runs)
    header = (
        f"# {config.data}: scratch vs inflated vs DistInit\n\n"
        f"Splits {', '.join(map(str, config.splits))}, seeds {', '.join(map(str, config.seeds))} ({runs} runs per init), "
        f"{config.epochs} epochs ({config.optimizer}, lr {config.lr}"
        f"{'' if config.linear_probe else f', trunk lr x{config.lr_trunk_scale}'}, the same for every init), "
        f"{config.frames}x{config.crop}² clips, {config.test_clips} test clips per video"
        f"{' x 3 crops' if config.three_crop else ''}{', linear probe' if config.linear_probe else ''}. "
        f"Accuracies in %, mean ± sample std over the runs.\n\n"
    )
    footer = "\n\n![training curves](curves.png)\n\n![confusion matrix of the best init](confusion.png)\n"
    atomic_write_text(out_dir / "RESULTS.md", header + table + footer)
    summary = {
        "config": dataclasses.asdict(config),
        "inits": [
            {"label": label, "init": result.init, "results_dir": str(result.out_dir), "summary": result.summary}
            for label, result in zip(labels, results)
        ],
    }
    atomic_write_text(out_dir / "results.json", json.dumps(summary, indent=1, sort_keys=True, default=str) + "\n")
    write_provenance(out_dir, config, stage="compare", inits=[result.init for result in results])


def compare(config: EvalConfig, inits: Sequence[str], out_dir: str | Path, show_progress: bool = False) -> Comparison:
    if not inits:
        raise ConfigError("compare needs at least one --inits entry (scratch, inflated:<model>, a checkpoint)")
    out_dir = Path(out_dir)
    if config.lr_trunk_scale is None and not config.linear_probe:
        # One schedule for every init: the single-run default (0.1 for pretrained trunks) would give the
        # pretrained rows a different trunk learning rate than scratch.
        config = dataclasses.replace(config, lr_trunk_scale=1.0)
        logger.info("compare: lr_trunk_scale unset; using 1.0 for every init so they share one schedule")
    scratch_student, scratch_width = scratch_architecture(inits, config)
    results = []
    for init in inits:
        if init == "scratch":
            init_config = dataclasses.replace(config, init=init, student=scratch_student, width=scratch_width, out=None)
        else:
            init_config = dataclasses.replace(config, init=init, student=None, width=None, out=None)
        logger.info("compare: %s", init)
        results.append(run_eval(init_config, show_progress=show_progress))
    labels = [init_label(result) for result in results]
    table = results_table(labels, results)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_report(out_dir, config, labels, results, table)
    return Comparison(out_dir, labels, results, table)
