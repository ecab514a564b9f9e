"""`distinit compare`: scratch vs inflated vs DistInit on the same data, splits, seeds and clip shape, one
architecture per comparison.

Rows are grouped by student architecture (name and width; the clip shape is the config's, one for every row).
`scratch` among the inits stands for a scratch run of EACH architecture the other inits use (or of --student
when given, which must then be every init's architecture), so every paired difference is against scratch on the
same network: a Δ between two architectures would measure the architecture as much as the init.

Each row is tuned on validation when `tune_lrs` is set (evaluate.tuning: learning rate and the epoch to keep,
chosen on each split's own validation part), then run once per (split, seed) with its split's chosen values (`run_eval`, cached by its key, so re-running a comparison only computes what is new). Before any run,
each init's pretraining videos are checked against the test lists (evaluate.overlap), so a refused init stops the
comparison before hours of finetuning. The comparison folder gets RESULTS.md, results.json and PNG plots
(evaluate.report).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Sequence

from distinit.evaluate.config import EvalConfig
from distinit.evaluate.data import load_listing, split_records
from distinit.evaluate.finetune import run_eval
from distinit.evaluate.initialization import DEFAULT_STUDENT, DEFAULT_WIDTH, INFLATED_PREFIX, resolve_init
from distinit.evaluate.overlap import check_pretraining_overlap
from distinit.evaluate.report import results_table, spread, write_report  # noqa: F401  (spread: the public helper)
from distinit.evaluate.results import EvalResult
from distinit.evaluate.statistics import PairedDifference, difference_across_distillations, difference_against
from distinit.evaluate.tuning import Tuning, tune
from distinit.pipeline.errors import ConfigError

logger = logging.getLogger(__name__)

SCRATCH = "scratch"
SHUFFLED_CONTROL = "DistInit, shuffled targets (control)"


@dataclasses.dataclass
class Comparison:
    out_dir: Path
    labels: list[str]
    results: list[EvalResult]
    table: str
    differences: list[PairedDifference | None] | None = None  # per row against its architecture's scratch row
    overlaps: list[dict[str, Any]] | None = None  # per row: pretraining videos and their overlap with the test lists
    tunings: list[Tuning | None] | None = None  # per row: what validation chose (None: not tuned)
    references: list[int | None] | None = None  # per row: the index of its scratch row (None: none; itself: scratch)
    pooled: list[dict[str, Any]] | None = None  # rows distilled with one recipe, several seeds: {"rows", "difference"}


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


Architecture = tuple[str, str]  # (student name, width)


@dataclasses.dataclass(frozen=True)
class Row:
    init: str  # the INIT as given; "scratch" for each scratch row
    architecture: Architecture
    description: dict[str, Any]


def inflated_architecture(init: str) -> Architecture:
    """The 3D student an `inflated:<model>` init becomes (always full width), without loading its weights."""
    from distinit.evaluate.inflate import INFLATED_SOURCES, parse_inflated_spec

    name, _ = parse_inflated_spec(init[len(INFLATED_PREFIX):])
    return INFLATED_SOURCES[name].student, "full"


def describe_init(init: str) -> dict[str, Any]:
    """An init's description; only checkpoints are opened (scratch and inflated saw no video)."""
    if init.startswith(INFLATED_PREFIX):
        name, width = inflated_architecture(init)
        return {"kind": "inflated", "spec": init, "architecture": {"name": name, "width": width}}
    return resolve_init(init).description


def architecture_of(description: dict[str, Any]) -> Architecture:
    architecture = description.get("architecture") or {}
    return str(architecture.get("name")), str(architecture.get("width"))


def plan_rows(inits: Sequence[str], config: EvalConfig) -> list[Row]:
    """The comparison's rows, grouped by architecture, each group's scratch row first (module docstring).

    A --student (or --width) that is not the architecture of every other init is refused in one line: it would
    give those inits a scratch row of another network."""
    others = [Row(init, architecture_of(description), description)
              for init in inits if init != SCRATCH for description in [describe_init(init)]]
    architectures = list(dict.fromkeys(row.architecture for row in others))
    if SCRATCH not in inits:
        return [row for architecture in architectures for row in others if row.architecture == architecture]
    if config.student is not None or config.width is not None or not architectures:
        asked = (config.student or (architectures[0][0] if architectures else DEFAULT_STUDENT),
                 config.width or (architectures[0][1] if architectures else DEFAULT_WIDTH))
        for row in others:
            if row.architecture != asked:
                raise ConfigError(
                    f"compare: {row.init} is a {' '.join(row.architecture)} but --student/--width ask scratch as a "
                    f"{' '.join(asked)}; every Δ is against scratch of the same architecture: drop --student/--width "
                    "(scratch then runs once per architecture) or compare that init on its own")
        architectures = [asked]
    rows = []
    for name, width in architectures:
        scratch = {"kind": "scratch", "spec": SCRATCH, "architecture": {"name": name, "width": width}}
        rows.append(Row(SCRATCH, (name, width), scratch))
        rows += [row for row in others if row.architecture == (name, width)]
    return rows


def check_overlaps(config: EvalConfig, descriptions: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each init's pretraining videos against the test lists of config.splits; refuses before any run."""
    listing, splits_folder = load_listing(config)
    split_lists = {split: split_records(listing, split, splits_folder) for split in config.splits}
    return [check_pretraining_overlap(description, split_lists, config.allow_test_overlap, dataset=config.data)
            for description in descriptions]


def reference_rows(rows: Sequence[Row]) -> list[int | None]:
    """Per row, the index of the scratch row of its architecture (a scratch row is its own), or None."""
    scratch = {row.architecture: index for index, row in enumerate(rows) if row.init == SCRATCH}
    return [scratch.get(row.architecture) for row in rows]


def paired_differences(results: Sequence[EvalResult], references: Sequence[int | None]) -> list[PairedDifference | None] | None:
    """Each non-scratch row's paired difference against its architecture's scratch row; None with no scratch."""
    if all(reference is None for reference in references):
        return None
    return [None if reference is None or reference == row
            else difference_against(result.runs, results[reference].runs, dataset=result.config.data)
            for row, (result, reference) in enumerate(zip(results, references))]


# Options of a distillation that say where or how fast it ran, or which seed: runs that differ only in these are
# draws of one recipe, and their rows pool into one interval over distillation runs.
DISTILL_RUN_ONLY = ("seed", "out", "targets", "videos_root", "prepared", "decoder", "decode_device", "workers", "device",
                    "cache_clips", "tensorboard")


def distillation_recipe(description: dict[str, Any]) -> str | None:
    """What a DistInit checkpoint was distilled with, less its seed and where it ran: its config, its targets' content
    fingerprint (another teacher cache or video pool is another recipe) and the step it was saved at (None: not a
    checkpoint, or one that does not record them)."""
    config = description.get("distill_config")
    fingerprint = (description.get("distill_provenance") or {}).get("targets_fingerprint")
    if description.get("kind") != "checkpoint" or not isinstance(config, dict) or not fingerprint:
        return None
    recipe = {name: value for name, value in config.items() if name not in DISTILL_RUN_ONLY}
    return json.dumps({"architecture": description.get("architecture"), "targets": fingerprint,
                       "step": description.get("distill_step"), **recipe}, sort_keys=True, default=str)


def pooled_distillations(rows: Sequence[Row], results: Sequence[EvalResult],
                         references: Sequence[int | None]) -> list[dict[str, Any]]:
    """For each recipe with two or more distillation runs among the rows: the paired difference against their
    scratch row with an interval that also resamples the distillation runs (evaluate.statistics)."""
    recipes: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        recipe = distillation_recipe(row.description)
        if recipe is not None and references[index] is not None:
            recipes.setdefault(recipe, []).append(index)
    pooled = []
    for members in recipes.values():
        seeds = [rows[index].description["distill_config"].get("seed") for index in members]
        if len(members) < 2:
            continue
        if len(set(seeds)) < len(seeds):  # e.g. checkpoint-best and checkpoint-last of one run: not two draws
            logger.info("compare: %s share a distillation seed; not pooled as distillation runs",
                        ", ".join(rows[index].init for index in members))
            continue
        reference = results[references[members[0]]]
        difference = difference_across_distillations([results[index].runs for index in members], reference.runs,
                                                     dataset=reference.config.data)
        if difference is not None:
            pooled.append({"rows": members, "difference": difference})
    return pooled


def row_config(config: EvalConfig, row: Row) -> EvalConfig:
    if row.init == SCRATCH:
        name, width = row.architecture
        return dataclasses.replace(config, init=SCRATCH, student=name, width=width, out=None)
    return dataclasses.replace(config, init=row.init, student=None, width=None, out=None)


def comparison_rows(config: EvalConfig, inits: Sequence[str]) -> tuple[EvalConfig, list[Row]]:
    """The comparison's shared config and its rows (one per init and architecture), as `compare` runs them."""
    if not inits:
        raise ConfigError("compare needs at least one --inits entry (scratch, inflated:<model>, a checkpoint)")
    if config.lr_trunk_scale is None and not config.linear_probe:
        # One trunk/classifier ratio for every init: the single-run default (0.1 for pretrained trunks) would give
        # the pretrained rows a different trunk learning rate than scratch. The rate itself is tuned per row.
        config = dataclasses.replace(config, lr_trunk_scale=1.0)
        logger.info("compare: lr_trunk_scale unset; using 1.0 for every init so they share one schedule")
    return config, plan_rows(ordered_inits(inits), config)


def compare(config: EvalConfig, inits: Sequence[str], out_dir: str | Path, show_progress: bool = False) -> Comparison:
    out_dir = Path(out_dir)
    config, rows = comparison_rows(config, inits)
    overlaps = check_overlaps(config, [row.description for row in rows])
    results, tunings = [], []
    for row in rows:
        init_config = row_config(config, row)
        logger.info("compare: %s (%s)", row.init, " ".join(row.architecture))
        tuning = tune(init_config, show_progress=show_progress) if config.tune_lrs else None
        tunings.append(tuning)
        results.append(run_eval(init_config, show_progress=show_progress, chosen=tuning.chosen() if tuning else None))
    labels = unique_labels([init_label(result) for result in results])
    references = reference_rows(rows)
    differences = paired_differences(results, references)
    if differences is None:
        logger.info("compare: no scratch among the inits; the paired difference column is left out")
    pooled = pooled_distillations(rows, results, references) if differences is not None else []
    table = results_table(labels, results, differences, references)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_report(out_dir, config, labels, results, table, differences, overlaps, tunings=tunings, references=references,
                 pooled=pooled)
    return Comparison(out_dir, labels, results, table, differences, overlaps, tunings, references, pooled)
