"""Is an init really better than scratch? The paired difference in video top-1 with a bootstrap interval.

With 30 test videos one video is 3.3 points and seeds spread by ±20, so a mean ± std per row says little
about a gap between rows. Two inits run on the same (split, seed) score the same test videos, so their
per-video correctness can be paired:

    difference of one run = mean over its test videos of (init correct - reference correct), in points
    statistic = mean over splits of (mean over the split's seeds of the run difference)

With the same seeds on every split the statistic is the mean of the runs' differences (and the difference
of the rows' mean video top-1 over runs).

Its 95% interval is a percentile bootstrap that follows how the runs were made. The splits are the
protocol's fixed factor, kept as they are. Within a split, every seed is scored on the SAME test videos,
so in each resample, for each split:
- ONE resample of the split's test videos (with replacement, over its whole test list) is drawn and
  applied to every seed of the split (the runs of a split are aligned to one ordered video-id list);
- the split's seeds are drawn with replacement.
Resampling the videos independently per run would let the test-video part of the uncertainty average out
over seeds, and the interval would shrink with the number of seeds although the test videos stay the same
(30 videos, identical per-video differences in every seed: ±20 with 1 seed, ±6 with 10). Here that part
does not shrink with more seeds; only the seed-to-seed spread does.

A test video in one run's predictions but not in its partner's counts as wrong where it is missing (a
video that failed to decode is scored as wrong); one in neither (it failed in both) is a difference of 0,
also when another seed of the split has predictions for it. Numpy only; the RNG is seeded, so a report is
reproducible.
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
    mean: float  # percentage points, the mean over splits of the mean over the split's seeds (module docstring)
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
    paired = [run for split_runs in by_split(paired).values() for run in align_split(split_runs)]
    missing = sum(pair.missing_videos for pair in paired)
    if missing:
        logger.warning("%d test videos appear in only one of two paired runs; counted as wrong where missing", missing)
    return paired


def by_split(paired: Iterable[PairedRun]) -> dict[int, list[PairedRun]]:
    """split -> its paired runs, splits and seeds in order."""
    splits: dict[int, list[PairedRun]] = {}
    for run in sorted(paired, key=lambda run: (run.split, run.seed)):
        splits.setdefault(run.split, []).append(run)
    return splits


def align_split(runs: Sequence[PairedRun]) -> list[PairedRun]:
    """The runs of one split on one ordered video-id list, so position v is the same test video in every seed.

    The list is the union of the runs' video ids; a run without a listed id has it in neither of its two
    runs' predictions (failed in both: 0). Anonymous trailing zeros (failed in both, pair_run's
    `test_videos`) pad every run to the longest test list. Aligning aligned runs changes nothing."""
    if len({run.split for run in runs}) > 1:
        raise ValueError(f"align_split takes the runs of one split, got splits {sorted({run.split for run in runs})}")
    video_ids = tuple(sorted(set().union(*(run.video_ids for run in runs))))
    length = max([len(video_ids)] + [len(run.differences) for run in runs])
    aligned = []
    for run in runs:
        by_id = dict(zip(run.video_ids, run.differences))
        differences = [by_id.get(video, 0.0) for video in video_ids] + [0.0] * (length - len(video_ids))
        in_one_run_only = run.missing_videos - (len(run.differences) - len(run.video_ids))
        missing = in_one_run_only + length - len(run.video_ids)
        aligned.append(PairedRun(run.split, run.seed, video_ids, np.array(differences, dtype=np.float64), missing))
    return aligned


def bootstrap_means(paired: Sequence[PairedRun], resamples: int, seed: int) -> np.ndarray:
    """(resamples,) bootstrap replicates of the statistic, in points (module docstring).

    Per split, a resample's statistic is (seed draw counts) @ D @ (video draw counts) / (S V), D the
    (S seeds, V videos) aligned differences: only how often each seed and each video is drawn matters.
    Videos whose column of D is the same pattern over seeds are interchangeable, so the video counts are
    drawn per distinct column (multinomial with the columns' shares): exact, and cheap for many videos."""
    rng = np.random.default_rng(seed)
    replicates = np.zeros(resamples, dtype=np.float64)
    splits = by_split(paired)
    for runs in splits.values():
        differences = np.stack([run.differences for run in align_split(runs)])  # (S, V)
        seeds, videos = differences.shape
        columns, counts = np.unique(differences, axis=1, return_counts=True)  # (S, K), (K,)
        video_counts = rng.multinomial(videos, counts / videos, size=resamples)  # (resamples, K)
        seed_counts = rng.multinomial(seeds, np.full(seeds, 1.0 / seeds), size=resamples)  # (resamples, S)
        replicates += ((seed_counts @ columns) * video_counts).sum(axis=1) / (seeds * videos)
    return 100.0 * replicates / len(splits)


def split_mean(paired: Sequence[PairedRun]) -> float:
    """The statistic: the mean over splits of the mean over each split's seeds of the run difference."""
    splits = by_split(paired).values()
    return sum(sum(run.difference for run in runs) / len(runs) for runs in splits) / len(splits)


def paired_difference(paired: Sequence[PairedRun], resamples: int = RESAMPLES, confidence: float = CONFIDENCE,
                      seed: int = BOOTSTRAP_SEED) -> PairedDifference:
    """The statistic, its percentile bootstrap interval and the per-run / per-seed differences."""
    if not paired:
        raise ValueError("no paired runs: the two inits share no (split, seed)")
    if resamples < 1 or not 0.0 < confidence < 1.0:
        raise ValueError(f"need resamples >= 1 and 0 < confidence < 1, got {resamples} and {confidence}")
    paired = [run for split_runs in by_split(paired).values() for run in align_split(split_runs)]
    per_run = {run.name: run.difference for run in paired}
    _, std = mean_std(list(per_run.values()))
    mean = split_mean(paired)
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
