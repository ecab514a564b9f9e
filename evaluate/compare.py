"""`distinit compare`: scratch vs inflated vs DistInit on the same data, splits, seeds and schedule.

Each init is one `run_eval` with the same EvalConfig but its `init` (finished runs are cached by
`run_eval`'s key, so re-running a comparison only computes what is new). Scratch, when among the inits,
comes first: it is the reference of every paired difference (evaluate.statistics). Before any run, each
init's pretraining videos are checked against the test lists (evaluate.overlap), so a refused init stops
the comparison before hours of finetuning. The comparison folder gets RESULTS.md, results.json and PNG
plots (evaluate.report).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Sequence

from evaluate.config import EvalConfig
from evaluate.data import load_listing, split_records
from evaluate.finetune import run_eval
from evaluate.initialization import INFLATED_PREFIX, resolve_init
from evaluate.overlap import check_pretraining_overlap
from evaluate.report import results_table, spread, write_report  # noqa: F401  (spread: the public helper)
from evaluate.results import EvalResult
from evaluate.statistics import PairedDifference, difference_against
from pipeline.errors import ConfigError

logger = logging.getLogger(__name__)

SCRATCH = "scratch"
SHUFFLED_CONTROL = "DistInit, shuffled targets (control)"


@dataclasses.dataclass
class Comparison:
    out_dir: Path
    labels: list[str]
    results: list[EvalResult]
    table: str
    differences: list[PairedDifference | None] | None = None  # per row against scratch (row 0); None: no scratch
    overlaps: list[dict[str, Any]] | None = None  # per row: pretraining videos and their overlap with the test lists


def shuffled_targets(init: dict[str, Any]) -> bool:
    """Whether a checkpoint was distilled on teacher targets shuffled across videos (the item-9 control)."""
    for source in (init.get("distill_config"), init.get("distill_provenance")):
        if isinstance(source, dict) and source.get("shuffle_targets"):
            return True
    return False


def init_label(result: EvalResult) -> str:
    init = result.init
    architecture = init.get("architecture") or {}
    shape = f"{architecture.get('name', '?')}" + (" tiny" if architecture.get("width") == "tiny" else "")
    kind = {"checkpoint": "DistInit", "scratch": "scratch", "inflated": "inflated"}.get(init.get("kind"), init.get("kind"))
    if init.get("kind") == "inflated":
        kind = f"inflated ({init.get('spec', '').split(':', 1)[-1].split('@')[0]})"  # inflated:<2d model>[@file]
    if init.get("kind") == "checkpoint" and shuffled_targets(init):
        kind = SHUFFLED_CONTROL
    return f"{kind} [{shape}]"


def unique_labels(labels: Sequence[str]) -> list[str]:
    """Labels with a ` #2`, ` #3` ... on repeats (two checkpoints of one architecture), so rows stay apart."""
    seen: dict[str, int] = {}
    unique = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        unique.append(label if seen[label] == 1 else f"{label} #{seen[label]}")
    return unique


def ordered_inits(inits: Sequence[str]) -> list[str]:
    """The inits in the order given, without repeats, scratch moved first (the paired reference)."""
    unique = list(dict.fromkeys(inits))
    return [SCRATCH, *[init for init in unique if init != SCRATCH]] if SCRATCH in unique else unique


def describe_inits(inits: Sequence[str]) -> list[dict[str, Any]]:
    """Each init's description; only checkpoints are opened (scratch and inflated saw no video)."""
    descriptions = []
    for init in inits:
        if init == SCRATCH:
            descriptions.append({"kind": "scratch", "spec": init})
        elif init.startswith(INFLATED_PREFIX):
            descriptions.append({"kind": "inflated", "spec": init})
        else:
            descriptions.append(resolve_init(init).description)
    return descriptions


def scratch_architecture(descriptions: Sequence[dict[str, Any]], config: EvalConfig) -> tuple[str | None, str | None]:
    """Scratch is trained as the same architecture as the DistInit checkpoint unless --student is given."""
    if config.student is not None:
        return config.student, config.width
    for description in descriptions:
        if description.get("kind") == "checkpoint":
            architecture = description.get("architecture") or {}
            return architecture.get("name"), architecture.get("width")
    return None, config.width


def check_overlaps(config: EvalConfig, descriptions: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each init's pretraining videos against the test lists of config.splits; refuses before any run."""
    listing, splits_folder = load_listing(config)
    split_lists = {split: split_records(listing, split, splits_folder) for split in config.splits}
    return [check_pretraining_overlap(description, split_lists, config.allow_test_overlap)
            for description in descriptions]


def paired_differences(results: Sequence[EvalResult], has_scratch: bool) -> list[PairedDifference | None] | None:
    """Row 0 is scratch, the reference: every other row's paired difference against it."""
    if not has_scratch:
        return None
    reference = results[0].runs
    return [None] + [difference_against(result.runs, reference) for result in results[1:]]


def compare(config: EvalConfig, inits: Sequence[str], out_dir: str | Path, show_progress: bool = False) -> Comparison:
    if not inits:
        raise ConfigError("compare needs at least one --inits entry (scratch, inflated:<model>, a checkpoint)")
    inits = ordered_inits(inits)
    out_dir = Path(out_dir)
    if config.lr_trunk_scale is None and not config.linear_probe:
        # One schedule for every init: the single-run default (0.1 for pretrained trunks) would give the
        # pretrained rows a different trunk learning rate than scratch.
        config = dataclasses.replace(config, lr_trunk_scale=1.0)
        logger.info("compare: lr_trunk_scale unset; using 1.0 for every init so they share one schedule")
    descriptions = describe_inits(inits)
    overlaps = check_overlaps(config, descriptions)
    scratch_student, scratch_width = scratch_architecture(descriptions, config)
    results = []
    for init in inits:
        if init == SCRATCH:
            init_config = dataclasses.replace(config, init=init, student=scratch_student, width=scratch_width, out=None)
        else:
            init_config = dataclasses.replace(config, init=init, student=None, width=None, out=None)
        logger.info("compare: %s", init)
        results.append(run_eval(init_config, show_progress=show_progress))
    labels = unique_labels([init_label(result) for result in results])
    differences = paired_differences(results, inits[0] == SCRATCH)
    if differences is None:
        logger.info("compare: no scratch among the inits; the paired difference column is left out")
    table = results_table(labels, results, differences)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_report(out_dir, config, labels, results, table, differences, overlaps)
    return Comparison(out_dir, labels, results, table, differences, overlaps)
