"""Test-time temporal ablations (evaluate.ablations) and the test scores (evaluate.scoring): failed test videos
count as wrong, and every ablation is scored from its own logits over the same videos."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from distinit.evaluate.ablations import (
    FRAME_REPEATED,
    ORIGINAL,
    TIME_SHUFFLED,
    ablated_views,
    middle_frame_order,
    time_permutation,
)
from distinit.evaluate.scoring import accuracies, score


def test_time_permutations_are_fixed_never_the_identity_and_differ_between_clips():
    for frames in (2, 3, 8):
        orders = [time_permutation(frames, video, clip) for video in range(20) for clip in range(3)]
        assert all(sorted(order) == list(range(frames)) for order in orders)
        assert not any(np.array_equal(order, np.arange(frames)) for order in orders)
    assert np.array_equal(time_permutation(8, 5, 1), time_permutation(8, 5, 1))  # the same in every run
    assert len({tuple(time_permutation(8, video, clip)) for video in range(5) for clip in range(3)}) > 10
    assert list(time_permutation(1, 0, 0)) == [0]
    assert list(middle_frame_order(8)) == [4] * 8 and list(middle_frame_order(3)) == [1] * 3


def test_ablated_views_reorder_each_view_in_time_and_nothing_else():
    clips, crops, frames = 2, 3, 5
    views = torch.randn(clips * crops, 3, frames, 4, 6)  # (clips x crops, C, T, H, W), every frame distinct
    ablated = ablated_views(views, video_index=7, crops_per_clip=crops)
    assert set(ablated) == {TIME_SHUFFLED, FRAME_REPEATED}
    for view in range(clips * crops):
        order = time_permutation(frames, 7, view // crops)  # one permutation per clip, shared by its crops
        assert torch.equal(ablated[TIME_SHUFFLED][view], views[view][:, order])
        assert not torch.equal(ablated[TIME_SHUFFLED][view], views[view])
        assert torch.equal(ablated[FRAME_REPEATED][view], views[view][:, [2] * frames])
    empty = ablated_views(views[:0], video_index=0, crops_per_clip=crops)  # a video that did not decode
    assert all(value.shape == (0, 3, frames, 4, 6) for value in empty.values())
    with pytest.raises(ValueError, match="clips x 3"):
        ablated_views(views[:4], video_index=0, crops_per_clip=crops)


def _logits(rows: list[int], classes: int = 6) -> np.ndarray:
    """One-hot-ish logits whose argmax is each row's class."""
    logits = np.zeros((len(rows), classes))
    logits[np.arange(len(rows)), rows] = 5.0
    return logits


def test_scores_count_failed_videos_as_wrong_and_score_each_ablation():
    records = [SimpleNamespace(id=f"v{index}", label=label) for index, label in enumerate([0, 1, 2, 3])]
    index = np.array([0, 0, 1, 1, 2, 2])  # video 3 did not decode; 2 views per video
    logits = {
        ORIGINAL: _logits([0, 0, 1, 5, 4, 4]),  # video 0 right twice, video 1 right once, video 2 wrong
        TIME_SHUFFLED: _logits([0, 5, 5, 5, 4, 4]),  # only one view right; video 0 ties 0 vs 5 -> class 0
        FRAME_REPEATED: _logits([5, 5, 5, 5, 5, 5]),
    }
    scores = score(logits, index, records, num_classes=6, views_per_video=2)
    assert scores["clip_top1"] == 3 / 8  # 3 right views of 4 videos x 2 views (video 3's two count as wrong)
    assert scores["video_top1"] == 2 / 4  # videos 0 and 1 (video 1 ties 1 vs 5 -> the lower class)
    assert scores["video_top5"] == 3 / 4  # video 2 has its label among its top 5 of 6 classes; video 3 cannot
    assert (scores["test_videos"], scores["test_views"], scores["failed_test_videos"]) == (4, 8, 1)
    assert [prediction["id"] for prediction in scores["predictions"]] == ["v0", "v1", "v2"]
    assert sum(map(sum, scores["confusion"])) == 3
    assert scores["ablations"][TIME_SHUFFLED] == {"clip_top1": 1 / 8, "video_top1": 1 / 4, "video_top5": 3 / 4}
    assert scores["ablations"][FRAME_REPEATED] == {"clip_top1": 0.0, "video_top1": 0.0, "video_top5": 3 / 4}
    assert set(score({ORIGINAL: logits[ORIGINAL]}, index, records, 6, 2)["ablations"]) == set()


def test_with_every_video_decoded_the_scores_are_the_plain_ones():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 5)
    logits = rng.normal(size=(15, 4))
    index = np.repeat(np.arange(5), 3)
    metrics, scored, video_scores = accuracies(logits, index, labels, views_per_video=3)
    assert scored == list(range(5)) and video_scores.shape == (5, 4)
    assert metrics["clip_top1"] == pytest.approx(float((logits.argmax(1) == labels[index]).mean()))
    assert metrics["video_top1"] == pytest.approx(float((video_scores.argmax(1) == labels).mean()))
    # order of the views does not matter
    permutation = np.array(list(itertools.islice(itertools.cycle([2, 0, 1]), 15))) + np.repeat(np.arange(5), 3) * 3
    shuffled, _, _ = accuracies(logits[permutation], index[permutation], labels, 3)
    assert shuffled == metrics
