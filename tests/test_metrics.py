"""Stage three's metrics on hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distinit.evaluate.metrics import clip_accuracy, confusion_matrix, mean_std, softmax, topk_accuracy, video_scores


def test_clip_accuracy_scores_every_clip_alone():
    logits = [[2.0, 1.0], [0.0, 3.0], [1.0, 0.0], [0.0, 1.0]]  # argmax 0, 1, 0, 1
    assert clip_accuracy(logits, [0, 1, 1, 1]) == 0.75
    assert clip_accuracy(torch.tensor(logits), torch.tensor([1, 0, 1, 0])) == 0.0
    with pytest.raises(ValueError):
        clip_accuracy(logits, [0, 1])


def test_softmax_matches_the_naive_formula_and_survives_large_logits():
    row = [1.0, 2.0, 4.0]
    naive = [math.exp(value) / sum(math.exp(other) for other in row) for value in row]
    np.testing.assert_allclose(softmax([row])[0], naive, rtol=1e-12)
    assert np.isfinite(softmax([[1000.0, 0.0]])).all()


def test_video_scores_average_softmax_and_can_overrule_the_majority_of_clips():
    # Video 0: two clips lean slightly to class 0, one is sure of class 1. Majority vote says 0;
    # the averaged softmax says 1. Video 1: one clip, class 0.
    logits = np.array([[0.1, 0.0], [0.1, 0.0], [0.0, 5.0], [3.0, 0.0]])
    video_index = np.array([0, 0, 0, 1])
    lean = math.exp(0.1) / (math.exp(0.1) + 1.0)  # p(class 0) of a leaning clip, 0.525
    sure = 1.0 / (1.0 + math.exp(5.0))  # p(class 0) of the sure clip, 0.0067
    expected_video_0 = (2 * lean + sure) / 3  # 0.352
    scores = video_scores(logits, video_index)
    assert scores.shape == (2, 2)
    np.testing.assert_allclose(scores[0], [expected_video_0, 1 - expected_video_0], rtol=1e-12)
    np.testing.assert_allclose(scores[1], [math.exp(3) / (math.exp(3) + 1), 1 / (math.exp(3) + 1)], rtol=1e-12)
    clip_predictions = logits[:3].argmax(axis=1)
    assert np.bincount(clip_predictions).argmax() == 0  # the majority of clips says class 0 ...
    assert scores.argmax(axis=1).tolist() == [1, 0]  # ... the averaged softmax says class 1
    assert topk_accuracy(scores, [1, 0], 1) == 1.0
    assert clip_accuracy(logits, [1, 1, 1, 0]) == 0.5


def test_video_scores_refuses_a_video_without_clips():
    with pytest.raises(ValueError, match="video 1 has no clips"):
        video_scores([[0.0, 1.0], [1.0, 0.0]], [0, 2], num_videos=3)


def test_top5_counts_a_label_among_the_five_best_and_breaks_ties_towards_lower_classes():
    scores = np.array([
        [0.30, 0.20, 0.15, 0.10, 0.09, 0.08, 0.08],  # label 4 is 5th: hit
        [0.30, 0.20, 0.15, 0.10, 0.09, 0.08, 0.08],  # label 5 is 6th: miss
        [0.10, 0.10, 0.10, 0.10, 0.10, 0.10, 0.40],  # all tied but class 6: ranks 6, 0, 1, 2, 3 -> label 4 misses
        [0.10, 0.10, 0.10, 0.10, 0.10, 0.10, 0.40],  # label 3 is 5th: hit
        [0.05, 0.05, 0.05, 0.05, 0.05, 0.25, 0.50],  # ranks 6, 5, 0, 1, 2: tied class 3 misses
    ])
    labels = np.array([4, 5, 4, 3, 3])
    assert topk_accuracy(scores, labels, 5) == pytest.approx(2 / 5)
    assert topk_accuracy(scores, labels, 1) == 0.0
    # Equal top scores: top-1 takes the lower class, like argmax.
    assert topk_accuracy([[0.5, 0.5], [0.5, 0.5]], [0, 1], 1) == 0.5
    # k beyond the number of classes counts every label in.
    assert topk_accuracy([[0.9, 0.1], [0.9, 0.1]], [1, 1], 5) == 1.0


def test_confusion_matrix_rows_are_true_classes():
    matrix = confusion_matrix([0, 1, 1, 2, 2], [0, 0, 1, 2, 1], 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert matrix.sum() == 5 and matrix.dtype == np.int64
    with pytest.raises(ValueError):
        confusion_matrix([3], [0], 3)


def test_mean_std_uses_the_sample_deviation():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_std([0.25]) == (0.25, 0.0)
    mean, std = mean_std([0.2, 0.4])
    assert mean == pytest.approx(0.3) and std == pytest.approx(math.sqrt(0.02))
    with pytest.raises(ValueError):
        mean_std([])
