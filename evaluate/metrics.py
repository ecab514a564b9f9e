"""Scores of a finetuned model: per-clip accuracy, video-level top-k from averaged softmax, confusion.

Pure functions over numpy arrays (torch tensors are accepted and converted). Conventions:
- a video's scores are the softmax of each of its clips' logits, averaged (not the logits averaged,
  not a majority vote of clip predictions), as in the paper's "video-level" accuracy;
- ties are broken towards the lower class index, everywhere: argmax takes the first maximum, and
  top-k ranks classes by a stable sort of the negated scores, so equal scores keep class order;
- k larger than the number of classes counts every video as correct (all classes are "in the top k");
- accuracies are fractions in [0, 1].
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def _as_array(values, dtype=np.float64) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=dtype)


def softmax(logits) -> np.ndarray:
    """Row-wise softmax of (N, C) logits in float64, shifted by each row's maximum for stability."""
    logits = _as_array(logits)
    shifted = logits - logits.max(axis=1, keepdims=True)
    exponentials = np.exp(shifted)
    return exponentials / exponentials.sum(axis=1, keepdims=True)


def clip_accuracy(clip_logits, clip_labels) -> float:
    """Share of clips whose own argmax is their label (every clip scored alone)."""
    logits = _as_array(clip_logits)
    labels = _as_array(clip_labels, np.int64)
    if logits.ndim != 2 or len(logits) != len(labels) or len(labels) == 0:
        raise ValueError(f"expected (N, C) logits and N labels with N > 0, got {logits.shape} and {labels.shape}")
    return float((logits.argmax(axis=1) == labels).mean())


def video_scores(clip_logits, clip_video_index, num_videos: int | None = None) -> np.ndarray:
    """(V, C): the softmax of each clip's logits averaged over the clips of each video.

    clip_video_index[i] is the video (0 .. V-1) clip i belongs to; V is `num_videos`, or the largest
    index + 1. Every video must have at least one clip.
    """
    probabilities = softmax(clip_logits)
    index = _as_array(clip_video_index, np.int64)
    if len(index) != len(probabilities):
        raise ValueError(f"{len(probabilities)} clips but {len(index)} video indices")
    count = int(num_videos) if num_videos is not None else int(index.max()) + 1 if len(index) else 0
    if len(index) and (index.min() < 0 or index.max() >= count):
        raise ValueError(f"video indices must lie in [0, {count}), got [{index.min()}, {index.max()}]")
    sums = np.zeros((count, probabilities.shape[1]), dtype=np.float64)
    np.add.at(sums, index, probabilities)
    clips_per_video = np.bincount(index, minlength=count)
    if (clips_per_video == 0).any():
        raise ValueError(f"video {int(np.argmin(clips_per_video))} has no clips")
    return sums / clips_per_video[:, None]


def topk_accuracy(scores, labels, k: int) -> float:
    """Share of rows whose label is among the k best-scored classes (ties: lower class index first)."""
    scores = _as_array(scores)
    labels = _as_array(labels, np.int64)
    if scores.ndim != 2 or len(scores) != len(labels) or len(labels) == 0:
        raise ValueError(f"expected (N, C) scores and N labels with N > 0, got {scores.shape} and {labels.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    ranking = np.argsort(-scores, axis=1, kind="stable")[:, : min(k, scores.shape[1])]
    return float((ranking == labels[:, None]).any(axis=1).mean())


def confusion_matrix(predictions, labels, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts: row = true class, column = predicted class."""
    predictions = _as_array(predictions, np.int64)
    labels = _as_array(labels, np.int64)
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions but {len(labels)} labels")
    for name, values in (("predictions", predictions), ("labels", labels)):
        if len(values) and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} must lie in [0, {num_classes})")
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample standard deviation with ddof=1); the deviation of a single value is 0."""
    values = [float(value) for value in values]
    if not values:
        raise ValueError("mean_std of no values")
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    variance = sum((value - mean) ** 2 for value in values) / (len(values) - 1)
    return mean, math.sqrt(variance)
