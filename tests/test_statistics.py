"""The paired difference against scratch and its bootstrap interval (issue 8; issue 19 item 4: source groups of test
videos resampled once per split and shared by its runs, seeds resampled within a distillation run, distillation runs
resampled, splits fixed), on known answers and seeded simulations."""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest

from distinit.evaluate.statistics import (
    PairedRun,
    bootstrap_means,
    difference_across_distillations,
    difference_against,
    pair_run,
    pair_runs,
    paired_difference,
    split_units,
)
from distinit.pipeline.datasets.groups import source_group


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
    # a test video failed in both runs and known only from the list's length is a group of its own
    units = split_units([pair_run(1, 0, init, reference, test_videos=5, dataset="ucf101")])
    assert len(units.groups) == 5 and units.members[3:] == ((), ()) and units.sums.tolist() == [[0, 1, -1, 0, 0]]
    # runs are paired by (split, seed); an unmatched one is left out; nothing paired gives None
    assert len(pair_runs([_run(1, 0, [True]), _run(1, 1, [True])], [_run(1, 0, [False])])) == 1
    assert difference_against([_run(2, 0, [True])], [_run(1, 0, [False])]) is None
    with pytest.raises(ValueError, match="no paired runs"):
        paired_difference([])


# --- source groups and distillation runs (issue 19 item 4) ---------------------------------------------------------


def _ucf_ids(groups: int, size: int, class_name: str = "Act") -> list[str]:
    """UCF-101 ids: `size` clips cut from each of `groups` source videos."""
    return [f"{class_name}/v_{class_name}_g{group:02d}_c{clip:02d}" for group in range(1, groups + 1)
            for clip in range(1, size + 1)]


def _paired(ids: list[str], differences_by_seed, dataset: str | None, split: int = 1, distillation: int = 0):
    """PairedRuns straight from per-video differences (pair_run's output without the prediction dicts)."""
    groups = tuple(ids) if dataset is None else tuple(source_group(dataset, video) for video in ids)
    return [PairedRun(split, seed, tuple(ids), np.asarray(differences, dtype=np.float64), 0, groups, distillation)
            for seed, differences in enumerate(differences_by_seed)]


def _clustered_differences(rng, groups: int, size: int, seeds: int) -> np.ndarray:
    """(seeds, groups x size) differences whose groups share an effect: half the source groups favour the init
    (+1 / -1 / 0 with 0.6 / 0.1 / 0.3, mean +0.5), half the reference (0.1 / 0.5 / 0.4, mean -0.4); the true
    mean is +5 points. Each seed redraws every video's outcome given its group."""
    easy = np.repeat(rng.random(groups) < 0.5, size)
    draws = rng.random((seeds, groups * size))
    favoured = np.select([draws < 0.6, draws < 0.7], [1, -1], 0)
    against = np.select([draws < 0.1, draws < 0.6], [1, -1], 0)
    return np.where(easy, favoured, against)


def test_bootstrap_resamples_source_groups():
    ids = _ucf_ids(groups=12, size=4)
    rng = np.random.default_rng(11)
    # the seam: the resampled units are exactly the source groups, every clip of a group in its unit
    units = split_units(_paired(ids, _clustered_differences(rng, 12, 4, 3), "ucf101"))
    assert len(units.groups) == 12 and units.sizes.tolist() == [4.0] * 12
    assert sorted(video for members in units.members for video in members) == sorted(ids)
    for group, members in zip(units.groups, units.members):
        assert {source_group("ucf101", video) for video in members} == {group}
    # a resample holds whole groups: every group has mean +50 (two wins, two ties), so every replicate is +50
    # exactly; resampling the clips instead would spread them
    within = np.concatenate([rng.permutation([1, 1, 0, 0]) for _ in range(12)])
    assert set(bootstrap_means(_paired(ids, [within], "ucf101"), 2000, seed=0)) == {50.0}
    assert bootstrap_means(_paired(ids, [within], None), 2000, seed=0).std() > 5.0
    # clustered data: the interval over groups is wider than over clips, and covers the true mean (+5) in about
    # 95% of 200 simulated experiments (30 groups of 5 clips, 3 seeds), where the one over clips falls short
    covered, widths = {"ucf101": 0, None: 0}, {"ucf101": [], None: []}
    ids = _ucf_ids(groups=30, size=5)
    for experiment in range(200):
        differences = _clustered_differences(np.random.default_rng(experiment), 30, 5, 3)
        for dataset in covered:
            difference = paired_difference(_paired(ids, differences, dataset), resamples=1000, seed=experiment,
                                           dataset=dataset)
            covered[dataset] += difference.low <= 5.0 <= difference.high
            widths[dataset].append(difference.high - difference.low)
    assert np.mean(widths["ucf101"]) > 1.4 * np.mean(widths[None])
    assert 0.90 <= covered["ucf101"] / 200 <= 0.99
    assert covered[None] / 200 < 0.88


def test_the_group_bootstrap_matches_a_plain_loop_of_the_hierarchical_scheme():
    """Distillation runs, then each drawn one's seeds, then one draw of source groups per split shared by every
    run of the split, in plain loops: the vectorised draw has its distribution (mean and spread)."""
    rng = np.random.default_rng(12)
    sizes = [1, 2, 3, 5, 2, 4, 1, 3]  # unequal groups: a replicate is the mean over the resampled clips
    ids = [f"v_Act_g{group:02d}_c{clip:02d}" for group, size in enumerate(sizes, 1) for clip in range(1, size + 1)]
    group_of = np.repeat(np.arange(len(sizes)), sizes)
    tables, paired = {}, []  # (distillation, split) -> (seeds, videos) differences
    for distillation, seeds in ((0, 3), (1, 2)):
        for split in (1, 2):
            shift = rng.choice([-0.6, 0.4], size=len(sizes))[group_of] + 0.6 * distillation  # shared by a group
            tables[distillation, split] = np.sign(np.round(rng.random((seeds, len(ids))) + shift - 0.5))
            paired += _paired(ids, tables[distillation, split], "ucf101", split, distillation)
    fast = bootstrap_means(paired, 20_000, seed=1)
    clips_of = [np.flatnonzero(group_of == group) for group in range(len(sizes))]
    draw, plain = np.random.default_rng(2), []
    for _ in range(6000):
        drawn = draw.integers(0, 2, 2)  # distillation runs, once for both splits
        split_values = []
        for split in (1, 2):
            clips = np.concatenate([clips_of[group] for group in draw.integers(0, len(sizes), len(sizes))])
            slot_values = []
            for distillation in drawn:
                table = tables[distillation, split]
                slot_values.append(np.mean([table[seed, clips].mean() for seed in draw.integers(0, len(table), len(table))]))
            split_values.append(np.mean(slot_values))
        plain.append(100.0 * np.mean(split_values))
    # 6000 plain replicates: the standard error of their mean is about 0.2 points, of their spread about 1%
    assert fast.mean() == pytest.approx(np.mean(plain), abs=0.8)
    assert fast.std() == pytest.approx(np.std(plain), rel=0.06)


def _run_on(ids: list[str], split: int, seed: int, correct) -> SimpleNamespace:
    predictions = [{"id": video, "label": 0, "predicted": 0 if right else 1} for video, right in zip(ids, correct)]
    return SimpleNamespace(split=split, seed=seed, predictions=predictions, test_videos=len(ids))


def test_distillation_runs_widen_the_interval_and_are_counted():
    ids = _ucf_ids(groups=100, size=3)
    base = np.random.default_rng(13).choice([-1, 0, 0, 1], size=len(ids))
    better = base.copy()
    better[np.flatnonzero(base == 0)[:60]] = 1  # the second checkpoint also wins 60 clips its sibling tied (+20)
    reference = [_run_on(ids, 1, seed, base == -1) for seed in range(3)]
    first = [_run_on(ids, 1, seed, base == 1) for seed in range(3)]
    second = [_run_on(ids, 1, seed, better == 1) for seed in range(3)]
    one = difference_against(first, reference, dataset="ucf101", resamples=4000)
    both = difference_across_distillations([first, second], reference, dataset="ucf101", resamples=4000)
    assert one.distillation_runs == 1 and both.distillation_runs == 2 and one.groups == both.groups == 100
    assert both.per_distillation == pytest.approx({"0": one.mean, "1": one.mean + 20.0})
    assert both.mean == pytest.approx(one.mean + 10.0)
    assert both.high - both.low > 2 * (one.high - one.low)  # 20 points apart against about 10 wide
    assert set(both.per_run) == {f"{distillation}/1/{seed}" for distillation in (0, 1) for seed in range(3)}
    assert both.to_dict()["dataset"] == "ucf101" and one.to_dict()["distillation_runs"] == 1
    # identical distillation runs add nothing: the interval of one run, up to resampling noise
    twice = difference_across_distillations([first, first], reference, dataset="ucf101", resamples=4000)
    assert twice.mean == pytest.approx(one.mean) and twice.high - twice.low == pytest.approx(one.high - one.low, rel=0.1)
    with pytest.raises(ValueError, match="'ucf-101': no source groups known"):
        difference_against(first, reference, dataset="ucf-101")
    with pytest.raises(ValueError, match="distillation run 1 pairs on splits"):
        difference_across_distillations([first, [_run_on(ids, 2, 0, [True] * len(ids))]],
                                        reference + [_run_on(ids, 2, 0, [False] * len(ids))], dataset="ucf101")


def test_ten_thousand_resamples_at_ucf101_size_take_well_under_two_seconds():
    # UCF-101 split 1: 3783 test videos in 707 groups (101 classes x 7), 3 seeds
    rng = np.random.default_rng(14)
    sizes = rng.integers(4, 7, 707)
    sizes[: 3783 - sizes.sum()] += 1
    ids = [f"C{group // 7}/v_C{group // 7}_g{group % 7 + 1:02d}_c{clip:02d}" for group, size in enumerate(sizes)
           for clip in range(1, size + 1)]
    assert len(ids) == 3783
    paired = _paired(ids, rng.choice([-1, 0, 0, 1], size=(3, len(ids))), "ucf101")
    started = time.perf_counter()
    replicates = bootstrap_means(paired, 10_000, seed=0)
    assert time.perf_counter() - started < 2.0
    assert len(replicates) == 10_000 and len(split_units(paired).groups) == 707
