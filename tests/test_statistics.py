"""Item 8: the paired difference against scratch and its hierarchical bootstrap interval, on known answers."""

from __future__ import annotations

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


def test_the_bootstrap_matches_a_naive_two_level_resampling():
    """The multinomial shortcut draws the same distribution as resampling runs, then videos, by index."""
    rng = np.random.default_rng(0)
    paired = pair_runs(_random_runs(rng, 3, 40, 0.6), _random_runs(rng, 3, 40, 0.3))
    fast = bootstrap_means(paired, 20000, seed=1)
    naive_rng, naive = np.random.default_rng(2), []
    for _ in range(20000):
        chosen = naive_rng.integers(0, len(paired), len(paired))
        naive.append(np.mean([paired[r].differences[naive_rng.integers(0, 40, 40)].mean() for r in chosen]) * 100)
    assert fast.mean() == pytest.approx(np.mean(naive), abs=0.3)
    assert fast.std() == pytest.approx(np.std(naive), rel=0.05)


def test_videos_and_runs_that_do_not_pair():
    # v2 failed to decode in the init's run (absent from its predictions): wrong there
    init = _predictions([True, True])
    reference = _predictions([True, False, True])
    run = pair_run(1, 0, init, reference)
    assert run.video_ids == ("v0", "v1", "v2") and run.differences.tolist() == [0, 1, -1] and run.missing_videos == 1
    # a fourth test video failed in both: a difference of 0, so the run's difference is over the whole list
    run = pair_run(1, 0, init, reference, test_videos=4)
    assert run.differences.tolist() == [0, 1, -1, 0] and run.difference == 0.0 and run.missing_videos == 2
    # runs are paired by (split, seed); an unmatched one is left out; nothing paired gives None
    assert len(pair_runs([_run(1, 0, [True]), _run(1, 1, [True])], [_run(1, 0, [False])])) == 1
    assert difference_against([_run(2, 0, [True])], [_run(1, 0, [False])]) is None
    with pytest.raises(ValueError, match="no paired runs"):
        paired_difference([])
