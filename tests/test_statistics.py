"""Item 8: the paired difference against scratch and its bootstrap interval (test videos resampled once per split
and shared by its seeds, seeds resampled within a split, splits fixed), on known answers."""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest

from evaluate.statistics import bootstrap_means, difference_against, pair_run, pair_runs, paired_difference


def _predictions(correct: list[bool], prefix: str = "v") -> list[dict]:
    """One prediction per test video; label 0, predicted 0 when correct else 1."""
    return [{"id": f"{prefix}{index}", "label": 0, "predicted": 0 if right else 1, "confidence": 0.5}
            for index, right in enumerate(correct)]


def _run(split: int, seed: int, correct: list[bool], test_videos: int | None = None) -> SimpleNamespace:
    return SimpleNamespace(split=split, seed=seed, predictions=_predictions(correct),
                           test_videos=len(correct) if test_videos is None else test_videos)


def _pair_from_differences(split: int, seed: int, differences) -> tuple[SimpleNamespace, SimpleNamespace]:
    """An (init, reference) pair of runs whose per-video differences are `differences` (in {-1, 0, 1})."""
    differences = np.asarray(differences)
    return _run(split, seed, list(differences == 1)), _run(split, seed, list(differences == -1))


def _width(pairs, resamples: int = 10_000, seed: int = 0) -> float:
    difference = difference_against([p[0] for p in pairs], [p[1] for p in pairs], resamples=resamples, seed=seed)
    return difference.high - difference.low


def _random_runs(rng, runs: int, videos: int, accuracy: float) -> list[SimpleNamespace]:
    return [_run(1 + index % 3, index // 3, list(rng.random(videos) < accuracy)) for index in range(runs)]


def test_identical_inits_differ_by_zero_with_a_zero_interval():
    rng = np.random.default_rng(1)
    runs = _random_runs(rng, 6, 30, 0.4)
    difference = difference_against(runs, runs, resamples=2000)
    assert difference.mean == 0.0 and (difference.low, difference.high) == (0.0, 0.0)
    assert difference.std_over_runs == 0.0 and set(difference.per_seed.values()) == {0.0}
    assert difference.runs == 6 and difference.videos == 180


def test_always_right_against_always_wrong_is_plus_100():
    right = [_run(split, seed, [True] * 30) for split in (1, 2, 3) for seed in (0, 1)]
    wrong = [_run(split, seed, [False] * 30) for split in (1, 2, 3) for seed in (0, 1)]
    difference = difference_against(right, wrong, resamples=1000)
    assert (difference.mean, difference.low, difference.high) == (100.0, 100.0, 100.0)
    assert difference.per_run == {f"{split}/{seed}": 100.0 for split in (1, 2, 3) for seed in (0, 1)}
    assert difference.per_seed == {"0": 100.0, "1": 100.0}
    assert difference_against(wrong, right, resamples=1000).mean == -100.0


def test_mean_is_the_difference_of_mean_video_top1_and_per_seed_averages_splits():
    # seed 0: split 1 +10 points (3 of 30 videos), split 2 +20; seed 1: split 1 -10, split 2 0
    def pair(split, seed, gained, lost):
        init = [True] * gained + [False] * lost + [False] * (30 - gained - lost)
        reference = [False] * gained + [True] * lost + [False] * (30 - gained - lost)
        return _run(split, seed, init), _run(split, seed, reference)

    pairs = [pair(1, 0, 3, 0), pair(2, 0, 6, 0), pair(1, 1, 0, 3), pair(2, 1, 0, 0)]
    difference = difference_against([p[0] for p in pairs], [p[1] for p in pairs], resamples=500)
    assert difference.per_run == pytest.approx({"1/0": 10.0, "2/0": 20.0, "1/1": -10.0, "2/1": 0.0})
    assert difference.per_seed == pytest.approx({"0": 15.0, "1": -5.0})
    assert difference.mean == pytest.approx(5.0)
    assert difference.std_over_runs == pytest.approx(np.std([10, 20, -10, 0], ddof=1))
    assert difference.low < difference.mean < difference.high


def test_interval_shrinks_with_more_videos_and_is_deterministic_for_a_seed():
    widths = []
    for videos in (30, 300, 3000):
        rng = np.random.default_rng(videos)
        init, reference = _random_runs(rng, 3, videos, 0.6), _random_runs(rng, 3, videos, 0.4)
        difference = difference_against(init, reference, resamples=4000, seed=7)
        widths.append(difference.high - difference.low)
        assert difference.low <= difference.mean <= difference.high
    assert widths[0] > widths[1] > widths[2]
    rng = np.random.default_rng(3)
    paired = pair_runs(_random_runs(rng, 4, 50, 0.5), _random_runs(rng, 4, 50, 0.5))
    assert paired_difference(paired, seed=5) == paired_difference(paired, seed=5)
    np.testing.assert_array_equal(bootstrap_means(paired, 100, 5), bootstrap_means(paired, 100, 5))
    assert not np.array_equal(bootstrap_means(paired, 100, 5), bootstrap_means(paired, 100, 6))


def _reference_bootstrap(init_runs, reference_runs, resamples: int, seed: int) -> np.ndarray:
    """The scheme in plain loops: per resample and split, one video resample shared by its seeds, seeds redrawn."""
    rng, replicates = np.random.default_rng(seed), []
    splits = sorted({run.split for run in init_runs})
    matrices = []
    for split in splits:
        pairs = [(init, reference) for init in init_runs for reference in reference_runs
                 if init.split == reference.split == split and init.seed == reference.seed]
        ids = sorted({row["id"] for pair in pairs for run in pair for row in run.predictions})
        rows = []
        for init, reference in pairs:
            init_right = {row["id"]: row["predicted"] == row["label"] for row in init.predictions}
            reference_right = {row["id"]: row["predicted"] == row["label"] for row in reference.predictions}
            rows.append([int(init_right.get(video, False)) - int(reference_right.get(video, False)) for video in ids])
        matrices.append(np.array(rows, dtype=float))  # (seeds, videos), columns the same video in every seed
    for _ in range(resamples):
        split_means = []
        for matrix in matrices:
            seeds, videos = matrix.shape
            video_draw = rng.integers(0, videos, videos)
            split_means.append(np.mean([matrix[seed_index, video_draw].mean()
                                        for seed_index in rng.integers(0, seeds, seeds)]))
        replicates.append(100.0 * np.mean(split_means))
    return np.array(replicates)


def test_the_bootstrap_matches_a_plain_loop_of_the_scheme():
    """The vectorised draw (counts per distinct column, per seed) has the distribution of the plain loop."""
    rng = np.random.default_rng(0)
    # 2 splits x 3 seeds x 40 videos; the seeds share part of their per-video outcome, as real seeds do
    init, reference = [], []
    for split in (1, 2):
        easy = rng.random(40) < 0.5
        for seed in range(3):
            init.append(_run(split, seed, list(easy | (rng.random(40) < 0.3))))
            reference.append(_run(split, seed, list(easy & (rng.random(40) < 0.7))))
    fast = bootstrap_means(pair_runs(init, reference), 20_000, seed=1)
    plain = _reference_bootstrap(init, reference, 20_000, seed=2)
    assert fast.mean() == pytest.approx(plain.mean(), abs=0.3)
    assert fast.std() == pytest.approx(plain.std(), rel=0.05)


def test_the_interval_does_not_shrink_with_seeds_that_see_the_same_test_videos():
    """Identical per-video differences in every seed: more seeds add no information about the test videos."""
    rng = np.random.default_rng(4)
    differences = {split: rng.choice([-1, 0, 0, 1], size=30) for split in (1, 2, 3)}
    widths = {seeds: _width([_pair_from_differences(split, seed, differences[split])
                             for split in (1, 2, 3) for seed in range(seeds)]) for seeds in (1, 3, 10)}
    assert widths[3] == pytest.approx(widths[1], rel=0.15) and widths[10] == pytest.approx(widths[1], rel=0.15)
    # one split of 30 videos: at every seed count, the width of a bootstrap of one run's 30 videos,
    # about 2 x 1.96 x (std of the video differences) / sqrt(30) (the old scheme: 4x narrower at 30 seeds)
    one_split = rng.choice([-1, 0, 0, 1], size=30)
    single = {seeds: _width([_pair_from_differences(1, seed, one_split) for seed in range(seeds)])
              for seeds in (1, 10, 30)}
    assert single[1] == pytest.approx(2 * 1.96 * 100 * one_split.std() / np.sqrt(30), rel=0.15)
    assert single[10] == pytest.approx(single[1], rel=0.15) and single[30] == pytest.approx(single[1], rel=0.15)


def test_seeds_that_disagree_widen_the_interval():
    rng = np.random.default_rng(5)
    common = rng.choice([-1, 0, 0, 1], size=30)
    identical = [_pair_from_differences(1, seed, common) for seed in range(4)]
    # the same per-video differences, except that half the seeds win 8 of the neutral videos and half lose them
    neutral = np.flatnonzero(common == 0)[:8]
    assert len(neutral) == 8
    noisy = []
    for seed in range(4):
        shifted = common.copy()
        shifted[neutral] = 1 if seed % 2 else -1
        noisy.append(_pair_from_differences(1, seed, shifted))
    mean = lambda pairs: difference_against([p[0] for p in pairs], [p[1] for p in pairs], resamples=100).mean
    assert mean(noisy) == pytest.approx(mean(identical))
    assert _width(noisy) > 1.2 * _width(identical)


def test_ten_thousand_resamples_of_ten_seeds_on_thirty_videos_take_well_under_a_second():
    rng = np.random.default_rng(6)
    paired = pair_runs(_random_runs(rng, 30, 30, 0.6), _random_runs(rng, 30, 30, 0.4))  # 3 splits x 10 seeds
    started = time.perf_counter()
    bootstrap_means(paired, 10_000, seed=0)
    assert time.perf_counter() - started < 0.5


def test_videos_and_runs_that_do_not_pair():
    # v2 failed to decode in the init's run (absent from its predictions): wrong there
    init = _predictions([True, True])
    reference = _predictions([True, False, True])
    run = pair_run(1, 0, init, reference)
    assert run.video_ids == ("v0", "v1", "v2") and run.differences.tolist() == [0, 1, -1] and run.missing_videos == 1
    # a fourth test video failed in both: a difference of 0, so the run's difference is over the whole list
    run = pair_run(1, 0, init, reference, test_videos=4)
    assert run.differences.tolist() == [0, 1, -1, 0] and run.difference == 0.0 and run.missing_videos == 2
    # the seeds of a split are aligned on one video-id list: v3, in neither run of seed 0, is a 0 there
    seed_0 = SimpleNamespace(split=1, seed=0, predictions=init, test_videos=0)
    seed_1 = SimpleNamespace(split=1, seed=1, predictions=_predictions([True, True, True, False]), test_videos=0)
    aligned = pair_runs([seed_0, seed_1], [SimpleNamespace(**{**vars(seed_0), "predictions": reference}),
                                           SimpleNamespace(**{**vars(seed_1), "predictions": _predictions([False] * 4)})])
    assert [run.video_ids for run in aligned] == [("v0", "v1", "v2", "v3")] * 2
    assert aligned[0].differences.tolist() == [0, 1, -1, 0] and aligned[0].missing_videos == 2
    assert aligned[1].differences.tolist() == [1, 1, 1, 0] and aligned[1].missing_videos == 0
    # runs are paired by (split, seed); an unmatched one is left out; nothing paired gives None
    assert len(pair_runs([_run(1, 0, [True]), _run(1, 1, [True])], [_run(1, 0, [False])])) == 1
    assert difference_against([_run(2, 0, [True])], [_run(1, 0, [False])]) is None
    with pytest.raises(ValueError, match="no paired runs"):
        paired_difference([])
