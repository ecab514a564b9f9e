"""Is an init really better than scratch? The paired difference in video top-1 with a bootstrap interval.

With 30 test videos one video is 3.3 points and seeds spread by ±20, so a mean ± std per row says little
about a gap between rows. Two inits run on the same (split, seed) score the same test videos, so their
per-video correctness can be paired:

    difference of one run = mean over its test videos of (init correct - reference correct), in points

The point estimate is the mean of the runs' differences (equal to the difference of the rows' mean video
top-1 over runs). Its 95% interval is a hierarchical percentile bootstrap: each resample draws the
(split, seed) runs with replacement, then, independently for every drawn run, its test videos with
replacement, and takes the mean of the drawn runs' differences. Both sources of spread (which seeds and
splits, which test videos) enter the interval.

A test video in one run's predictions but not in its partner's counts as wrong where it is missing (a
video that failed to decode is scored as wrong); one in neither (it failed in both) is a difference of 0.
Numpy only; the RNG is seeded, so a report is reproducible.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Iterable, Sequence

import numpy as np

from evaluate.metrics import mean_std

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

    @property
    def name(self) -> str:
        return f"{self.split}/{self.seed}"

    @property
    def difference(self) -> float:
        """This run's video top-1 difference in percentage points."""
        return 100.0 * float(self.differences.mean())


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    mean: float  # percentage points, the mean over paired runs
    low: float  # the bootstrap interval's bounds, in points
    high: float
    confidence: float
    std_over_runs: float  # sample std of the runs' differences
    per_run: dict[str, float]  # "split/seed" -> difference in points
    per_seed: dict[str, float]  # seed -> difference averaged over splits
    runs: int
    videos: int  # paired test videos, summed over runs
    missing_videos: int
    resamples: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def correctness(predictions: Iterable[dict[str, Any]]) -> dict[str, bool]:
    """video id -> whether its predicted class is its label."""
    return {str(row["id"]): int(row["predicted"]) == int(row["label"]) for row in predictions}


def pair_run(split: int, seed: int, init_predictions, reference_predictions, test_videos: int = 0) -> PairedRun:
    """Pair two runs' test videos by id; a video missing on one side counts as wrong on that side.

    `test_videos`, the length of the test list, adds a difference of 0 for each video in neither run's
    predictions (failed to decode in both: wrong in both), so the run's difference is over the whole list."""
    init_correct, reference_correct = correctness(init_predictions), correctness(reference_predictions)
    video_ids = tuple(sorted(set(init_correct) | set(reference_correct)))
    if not video_ids:
        raise ValueError(f"split {split} seed {seed}: neither run has test predictions to pair")
    differences = [int(init_correct.get(video, False)) - int(reference_correct.get(video, False)) for video in video_ids]
    both_failed = max(0, test_videos - len(video_ids))
    missing = len(set(init_correct) ^ set(reference_correct)) + both_failed
    return PairedRun(split, seed, video_ids, np.array(differences + [0] * both_failed, dtype=np.float64), missing)


def pair_runs(init_runs: Sequence[Any], reference_runs: Sequence[Any]) -> list[PairedRun]:
    """PairedRuns for every (split, seed) both sides ran (objects with split, seed, predictions)."""
    reference_by_key = {(run.split, run.seed): run for run in reference_runs}
    paired, unmatched = [], []
    for run in sorted(init_runs, key=lambda run: (run.split, run.seed)):
        reference = reference_by_key.get((run.split, run.seed))
        if reference is None:
            unmatched.append(f"{run.split}/{run.seed}")
            continue
        test_videos = max(int(getattr(run, "test_videos", 0) or 0), int(getattr(reference, "test_videos", 0) or 0))
        paired.append(pair_run(run.split, run.seed, run.predictions, reference.predictions, test_videos))
    if unmatched:
        logger.warning("runs %s have no reference run of the same split and seed; left out of the paired difference",
                       ", ".join(unmatched))
    missing = sum(pair.missing_videos for pair in paired)
    if missing:
        logger.warning("%d test videos appear in only one of two paired runs; counted as wrong where missing", missing)
    return paired


def bootstrap_means(paired: Sequence[PairedRun], resamples: int, seed: int) -> np.ndarray:
    """(resamples,) bootstrap replicates of the mean run difference, in points (module docstring).

    Drawing V videos with replacement from a run only matters through how often each distinct value is
    drawn, which is multinomial with the values' shares: exact, and no (resamples, V) index array."""
    rng = np.random.default_rng(seed)
    count = len(paired)
    chosen = rng.integers(0, count, size=(resamples, count))  # which run fills each slot of each resample
    slot_means = np.empty((resamples, count), dtype=np.float64)
    for index, run in enumerate(paired):
        slots = chosen == index
        values, counts = np.unique(run.differences, return_counts=True)
        draws = rng.multinomial(len(run.differences), counts / counts.sum(), size=int(slots.sum()))  # (n, K)
        slot_means[slots] = draws @ values / len(run.differences)
    return 100.0 * slot_means.mean(axis=1)


def paired_difference(paired: Sequence[PairedRun], resamples: int = RESAMPLES, confidence: float = CONFIDENCE,
                      seed: int = BOOTSTRAP_SEED) -> PairedDifference:
    """Mean paired difference, its percentile bootstrap interval and the per-run / per-seed differences."""
    if not paired:
        raise ValueError("no paired runs: the two inits share no (split, seed)")
    if resamples < 1 or not 0.0 < confidence < 1.0:
        raise ValueError(f"need resamples >= 1 and 0 < confidence < 1, got {resamples} and {confidence}")
    per_run = {run.name: run.difference for run in paired}
    mean, std = mean_std(list(per_run.values()))
    replicates = bootstrap_means(paired, resamples, seed)
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(replicates, [tail, 100.0 - tail])
    by_seed: dict[int, list[float]] = {}
    for run in paired:
        by_seed.setdefault(run.seed, []).append(run.difference)
    return PairedDifference(
        mean=mean, low=float(low), high=float(high), confidence=confidence, std_over_runs=std, per_run=per_run,
        per_seed={str(seed_value): sum(values) / len(values) for seed_value, values in sorted(by_seed.items())},
        runs=len(paired), videos=sum(len(run.differences) for run in paired),
        missing_videos=sum(run.missing_videos for run in paired), resamples=resamples,
    )


def difference_against(init_runs, reference_runs, **options) -> PairedDifference | None:
    """The paired difference of `init_runs` against `reference_runs`, or None when no run pairs up."""
    paired = pair_runs(init_runs, reference_runs)
    return paired_difference(paired, **options) if paired else None
