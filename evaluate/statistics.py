"""Is an init really better than scratch? The paired difference in video top-1 with a bootstrap interval.

With 30 test videos one video is 3.3 points and seeds spread by ±20, so a mean ± std per row says little
about a gap between rows. Two inits run on the same (split, seed) score the same test videos, so their
per-video correctness can be paired:

    difference of one run = mean over its test videos of (init correct - reference correct), in points
    statistic = mean over splits of (mean over distillation runs of (mean over seeds of the run difference))

An init usually has one distillation run (one DistInit checkpoint); with several (checkpoints distilled
with different seeds, each finetuned with the same eval seeds) each is paired with the same scratch runs.

Its 95% interval is a percentile bootstrap that follows how the runs were made; the splits are the
protocol's fixed factor, kept as they are. In each resample:
- the distillation runs are drawn with replacement, once for every split (a checkpoint serves them all);
- per split, each drawn distillation run draws its seeds with replacement;
- per split, ONE resample of the SOURCE GROUPS of its test videos (pipeline.datasets.groups: a UCF-101
  `gXX` group, an HMDB-51 source video) is drawn and applied to every run of the split; a drawn group
  brings all its videos, and the replicate is the mean over the resampled videos.
Clips of one source video share scene, people and camera: resampled as independent videos they would give
an interval narrower than the data allow. Every seed of a split is scored on the SAME test videos, so the
test-video part of the uncertainty does not shrink with more seeds. With one distillation run the interval is
conditional on that distillation (`distillation_runs` says so).

A test video in one run's predictions but not in its partner's counts as wrong where it is missing (a
video that failed to decode is scored as wrong); one in neither (it failed in both) is a difference of 0,
also when another seed of the split has predictions for it; one in neither and without an id (only the
length of the test list says it exists) is its own group. Without a data set name every test video is its
own group (the interval of independent videos: too narrow for UCF-101 and HMDB-51). Numpy only; the RNG is
seeded, so a report is reproducible.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Iterable, Sequence

import numpy as np

from distinit.evaluate.metrics import mean_std
from distinit.pipeline.datasets.groups import GROUPED_DATASETS, source_group

logger = logging.getLogger(__name__)

RESAMPLES = 10_000
CONFIDENCE = 0.95
BOOTSTRAP_SEED = 0


@dataclasses.dataclass(frozen=True)
class PairedRun:
    split: int
    seed: int
    video_ids: tuple[str, ...]
    differences: np.ndarray  # (V,) in {-1, 0, 1}: init correct - reference correct; then 0 per video failed in both
    missing_videos: int  # test videos absent from one or both runs' predictions (failed to decode: wrong there)
    groups: tuple[str, ...] = ()  # the source group of each of `video_ids`; () or absent: each video its own
    distillation: int = 0  # which distillation run of the init this run was finetuned from

    @property
    def name(self) -> str:
        return f"{self.split}/{self.seed}"

    @property
    def difference(self) -> float:
        """This run's video top-1 difference in percentage points."""
        return 100.0 * float(self.differences.mean())


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    mean: float  # percentage points, the statistic of the module docstring
    low: float  # the bootstrap interval's bounds, in points
    high: float
    confidence: float
    std_over_runs: float  # sample std of the runs' differences
    per_run: dict[str, float]  # "split/seed" ("distillation/split/seed" with several) -> difference in points
    per_seed: dict[str, float]  # seed -> difference averaged over its runs
    runs: int
    videos: int  # paired test videos, summed over runs
    missing_videos: int
    resamples: int
    groups: int  # source groups of the test videos (the resampled units), summed over splits
    distillation_runs: int  # 1: the interval is conditional on one distillation
    per_distillation: dict[str, float]  # distillation run -> its statistic, in points
    dataset: str | None  # whose source groups were resampled; None: every test video its own group

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class SplitUnits:
    """One split's runs on its resampling units, the source groups of its test videos (the bootstrap's seam)."""

    runs: tuple[tuple[int, int], ...]  # (distillation, seed) of each row of `sums`
    groups: tuple[str, ...]  # (K,)
    members: tuple[tuple[str, ...], ...]  # (K,) each group's video ids; () for a failed-in-both video without id
    sizes: np.ndarray  # (K,) videos per group
    sums: np.ndarray  # (runs, K) each run's differences summed over the group's videos


def correctness(predictions: Iterable[dict[str, Any]]) -> dict[str, bool]:
    """video id -> whether its predicted class is its label."""
    return {str(row["id"]): int(row["predicted"]) == int(row["label"]) for row in predictions}


def pair_run(split: int, seed: int, init_predictions, reference_predictions, test_videos: int = 0,
             dataset: str | None = None, distillation: int = 0) -> PairedRun:
    """Pair two runs' test videos by id; a video missing on one side counts as wrong on that side.

    `test_videos`, the length of the test list, adds a difference of 0 for each video in neither run's
    predictions (failed to decode in both: wrong in both), so the run's difference is over the whole list.
    `dataset` names the source groups (pipeline.datasets.groups); None: each video its own group."""
    init_correct, reference_correct = correctness(init_predictions), correctness(reference_predictions)
    video_ids = tuple(sorted(set(init_correct) | set(reference_correct)))
    if not video_ids:
        raise ValueError(f"split {split} seed {seed}: neither run has test predictions to pair")
    differences = [int(init_correct.get(video, False)) - int(reference_correct.get(video, False)) for video in video_ids]
    both_failed = max(0, test_videos - len(video_ids))
    missing = len(set(init_correct) ^ set(reference_correct)) + both_failed
    groups = video_ids if dataset is None else tuple(source_group(dataset, video) for video in video_ids)
    return PairedRun(split, seed, video_ids, np.array(differences + [0] * both_failed, dtype=np.float64), missing,
                     groups, distillation)


def pair_runs(init_runs: Sequence[Any], reference_runs: Sequence[Any], dataset: str | None = None,
              distillation: int = 0) -> list[PairedRun]:
    """PairedRuns for every (split, seed) both sides ran (objects with split, seed, predictions)."""
    if dataset is not None and dataset not in GROUPED_DATASETS:
        raise ValueError(f"dataset {dataset!r}: no source groups known for it; name one of "
                         f"{', '.join(GROUPED_DATASETS)} (or None: each test video its own group)")
    if dataset is None:
        logger.warning("paired difference without a data set name: each test video is resampled as its own group, "
                       "so clips of one source video count as independent and the interval is too narrow")
    reference_by_key = {(run.split, run.seed): run for run in reference_runs}
    paired, unmatched = [], []
    for run in sorted(init_runs, key=lambda run: (run.split, run.seed)):
        reference = reference_by_key.get((run.split, run.seed))
        if reference is None:
            unmatched.append(f"{run.split}/{run.seed}")
            continue
        test_videos = max(int(getattr(run, "test_videos", 0) or 0), int(getattr(reference, "test_videos", 0) or 0))
        paired.append(pair_run(run.split, run.seed, run.predictions, reference.predictions, test_videos, dataset,
                               distillation))
    if unmatched:
        logger.warning("runs %s have no reference run of the same split and seed; left out of the paired difference",
                       ", ".join(unmatched))
    paired = [run for split_runs in by_split(paired).values() for run in align_split(split_runs)]
    missing = sum(pair.missing_videos for pair in paired)
    if missing:
        logger.warning("%d test videos appear in only one of two paired runs; counted as wrong where missing", missing)
    return paired


def by_split(paired: Iterable[PairedRun]) -> dict[int, list[PairedRun]]:
    """split -> its paired runs, splits, distillation runs and seeds in order."""
    splits: dict[int, list[PairedRun]] = {}
    for run in sorted(paired, key=lambda run: (run.split, run.distillation, run.seed)):
        splits.setdefault(run.split, []).append(run)
    return splits


def align_split(runs: Sequence[PairedRun]) -> list[PairedRun]:
    """The runs of one split on one ordered video-id list, so position v is the same test video in every run.

    The list is the union of the runs' video ids; a run without a listed id has it in neither of its two
    runs' predictions (failed in both: 0). Anonymous trailing zeros (failed in both, pair_run's
    `test_videos`) pad every run to the longest test list. Aligning aligned runs changes nothing."""
    if len({run.split for run in runs}) > 1:
        raise ValueError(f"align_split takes the runs of one split, got splits {sorted({run.split for run in runs})}")
    group_of: dict[str, str] = {}
    for run in runs:
        group_of.update(zip(run.video_ids, run.groups or run.video_ids))
    video_ids = tuple(sorted(group_of))
    groups = tuple(group_of[video] for video in video_ids)
    length = max([len(video_ids)] + [len(run.differences) for run in runs])
    aligned = []
    for run in runs:
        by_id = dict(zip(run.video_ids, run.differences))
        differences = [by_id.get(video, 0.0) for video in video_ids] + [0.0] * (length - len(video_ids))
        in_one_run_only = run.missing_videos - (len(run.differences) - len(run.video_ids))
        missing = in_one_run_only + length - len(run.video_ids)
        aligned.append(PairedRun(run.split, run.seed, video_ids, np.array(differences, dtype=np.float64), missing,
                                 groups, run.distillation))
    return aligned


def split_units(runs: Sequence[PairedRun]) -> SplitUnits:
    """The runs of one split summed over the source groups of its test videos (aligned first)."""
    aligned = align_split(runs)
    first = aligned[0]
    names = sorted(set(first.groups))
    column = {name: index for index, name in enumerate(names)}
    anonymous = len(first.differences) - len(first.video_ids)  # failed in both, no id: one group each
    # (V,) the group of each position of the differences; the anonymous trailing videos come last
    group_index = np.array([column[group] for group in first.groups] + list(range(len(names), len(names) + anonymous)),
                           dtype=np.int64)
    members: dict[str, list[str]] = {name: [] for name in names}
    for video, group in zip(first.video_ids, first.groups):
        members[group].append(video)
    groups = len(names) + anonymous
    return SplitUnits(
        runs=tuple((run.distillation, run.seed) for run in aligned),
        groups=tuple(names) + tuple(f"(failed in both, no id, #{index})" for index in range(anonymous)),
        members=tuple(tuple(members[name]) for name in names) + ((),) * anonymous,
        sizes=np.bincount(group_index, minlength=groups).astype(np.float64),
        sums=np.stack([np.bincount(group_index, weights=run.differences, minlength=groups) for run in aligned]),
    )


def run_weights(units: SplitUnits, distillations: Sequence[int], distillation_counts: np.ndarray,
                rng: np.random.Generator) -> np.ndarray:
    """(resamples, runs) weight of each run of a split in each replicate: distillation run r drawn m times
    draws m x S_r of its S_r seeds (m independent draws of S_r add up to one multinomial of m x S_r)."""
    weights = np.zeros((len(distillation_counts), len(units.runs)))
    for position, distillation in enumerate(distillations):
        rows = [index for index, (run_distillation, _) in enumerate(units.runs) if run_distillation == distillation]
        seeds = len(rows)
        seed_counts = rng.multinomial(distillation_counts[:, position] * seeds, np.full(seeds, 1.0 / seeds))
        weights[:, rows] = seed_counts / (len(distillations) * seeds)
    return weights


def bootstrap_means(paired: Sequence[PairedRun], resamples: int, seed: int) -> np.ndarray:
    """(resamples,) bootstrap replicates of the statistic, in points (module docstring).

    Per split, a replicate is w (W @ G) / w n: G the (runs, K) group sums of the differences, n the (K,) group
    sizes, W the runs' weights (run_weights) and w the (K,) group draw counts. Only how often each group is
    drawn matters, and groups with the same column of [G; n] are interchangeable, so the counts are drawn per
    distinct column (multinomial with the columns' shares): exact, and cheap for thousands of videos."""
    rng = np.random.default_rng(seed)
    distillations = sorted({run.distillation for run in paired})
    count = len(distillations)
    distillation_counts = rng.multinomial(count, np.full(count, 1.0 / count), size=resamples)  # (resamples, R)
    replicates = np.zeros(resamples, dtype=np.float64)
    splits = by_split(paired)
    for runs in splits.values():
        units = split_units(runs)
        weights = run_weights(units, distillations, distillation_counts, rng)  # (resamples, runs)
        columns, shares = np.unique(np.vstack([units.sums, units.sizes]), axis=1, return_counts=True)  # (runs+1, K')
        groups = len(units.sizes)
        group_counts = rng.multinomial(groups, shares / groups, size=resamples)  # (resamples, K')
        replicates += ((weights @ columns[:-1]) * group_counts).sum(axis=1) / (group_counts @ columns[-1])
    return 100.0 * replicates / len(splits)


def split_mean(paired: Sequence[PairedRun]) -> float:
    """The statistic: mean over splits of the mean over distillation runs of the mean over seeds."""
    split_values = []
    for runs in by_split(paired).values():
        by_distillation: dict[int, list[float]] = {}
        for run in runs:
            by_distillation.setdefault(run.distillation, []).append(run.difference)
        split_values.append(np.mean([np.mean(values) for values in by_distillation.values()]))
    return float(np.mean(split_values))


def check_distillation_splits(paired: Sequence[PairedRun]) -> list[int]:
    """The distillation runs, in order; each must pair on the same splits (the statistic averages them per split)."""
    splits_of: dict[int, set[int]] = {}
    for run in paired:
        splits_of.setdefault(run.distillation, set()).add(run.split)
    distillations = sorted(splits_of)
    for distillation in distillations[1:]:
        if splits_of[distillation] != splits_of[distillations[0]]:
            raise ValueError(f"distillation run {distillation} pairs on splits {sorted(splits_of[distillation])} but "
                             f"run {distillations[0]} on {sorted(splits_of[distillations[0]])}; finetune every "
                             "distillation run on the same splits")
    return distillations


def paired_difference(paired: Sequence[PairedRun], resamples: int = RESAMPLES, confidence: float = CONFIDENCE,
                      seed: int = BOOTSTRAP_SEED, dataset: str | None = None) -> PairedDifference:
    """The statistic, its percentile bootstrap interval and the per-run / per-seed / per-distillation differences.
    `dataset` is recorded in the result: the name `paired` was paired with (pair_runs), None if none."""
    if not paired:
        raise ValueError("no paired runs: the two inits share no (split, seed)")
    if resamples < 1 or not 0.0 < confidence < 1.0:
        raise ValueError(f"need resamples >= 1 and 0 < confidence < 1, got {resamples} and {confidence}")
    distillations = check_distillation_splits(paired)
    splits = by_split(paired)
    paired = [run for split_runs in splits.values() for run in align_split(split_runs)]
    several = len(distillations) > 1
    per_run = {(f"{run.distillation}/" if several else "") + run.name: run.difference for run in paired}
    _, std = mean_std(list(per_run.values()))
    replicates = bootstrap_means(paired, resamples, seed)
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(replicates, [tail, 100.0 - tail])
    by_seed: dict[int, list[float]] = {}
    for run in paired:
        by_seed.setdefault(run.seed, []).append(run.difference)
    return PairedDifference(
        mean=split_mean(paired), low=float(low), high=float(high), confidence=confidence, std_over_runs=std,
        per_run=per_run,
        per_seed={str(seed_value): sum(values) / len(values) for seed_value, values in sorted(by_seed.items())},
        runs=len(paired), videos=sum(len(run.differences) for run in paired),
        missing_videos=sum(run.missing_videos for run in paired), resamples=resamples,
        groups=sum(len(split_units(runs).groups) for runs in splits.values()), distillation_runs=len(distillations),
        per_distillation={str(distillation): split_mean([run for run in paired if run.distillation == distillation])
                          for distillation in distillations},
        dataset=dataset,
    )


def difference_against(init_runs, reference_runs, *, dataset: str | None = None, **options) -> PairedDifference | None:
    """The paired difference of one distillation's (or any init's) `init_runs` against `reference_runs`, or None
    when no run pairs up. `dataset` ("ucf101", "hmdb51", ...) names the source groups the bootstrap resamples."""
    return difference_across_distillations([init_runs], reference_runs, dataset=dataset, **options)


def difference_across_distillations(init_runs_by_distillation: Sequence[Sequence[Any]], reference_runs, *,
                                    dataset: str | None = None, **options) -> PairedDifference | None:
    """The paired difference of an init with several distillation runs (one list of eval runs per distillation
    run, each paired with the same `reference_runs`); the interval resamples distillation runs too."""
    paired = []
    for distillation, init_runs in enumerate(init_runs_by_distillation):
        runs = pair_runs(init_runs, reference_runs, dataset, distillation)
        if not runs:
            logger.warning("distillation run %d has no run paired with the reference; left out", distillation)
        paired += runs
    return paired_difference(paired, dataset=dataset, **options) if paired else None
