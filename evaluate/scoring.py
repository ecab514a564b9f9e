"""Scores of one finetuned model on one split's test list, from `evaluate.finetune.predict`'s logits.

Accuracies are over the whole test list: a test video that failed to decode counts as wrong (video top-1
and top-5), and so do its views (clip top-1), as if the model had guessed wrong on them; dropping them
would score a run on an easier subset. Confusion and predictions cover the videos that decoded.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from distinit.evaluate.ablations import ORIGINAL
from distinit.evaluate.metrics import clip_accuracy, confusion_matrix, topk_accuracy, video_scores


def accuracies(clip_logits: np.ndarray, clip_video_index: np.ndarray, labels: np.ndarray,
               views_per_video: int) -> tuple[dict[str, float], list[int], np.ndarray]:
    """(clip_top1 / video_top1 / video_top5 over every test video, the scored videos, their scores (V, C)).

    `labels` holds every test video's label; a video without views (it did not decode) counts as wrong in
    video top-1/top-5, and its `views_per_video` views as wrong in clip top-1."""
    scored = sorted(set(clip_video_index.tolist()))
    position = {video: place for place, video in enumerate(scored)}
    clip_position = np.array([position[video] for video in clip_video_index], dtype=np.int64)
    scores = video_scores(clip_logits, clip_position, len(scored))  # (V, C)
    scored_labels = labels[scored]
    clip_hits = round(clip_accuracy(clip_logits, scored_labels[clip_position]) * len(clip_logits))
    all_views = len(clip_logits) + (len(labels) - len(scored)) * views_per_video
    metrics = {"clip_top1": clip_hits / all_views}
    for name, k in (("video_top1", 1), ("video_top5", 5)):
        metrics[name] = round(topk_accuracy(scores, scored_labels, k) * len(scored)) / len(labels)
    return metrics, scored, scores


def score(clip_logits: dict[str, np.ndarray], clip_video_index: np.ndarray, records, num_classes: int,
          views_per_video: int) -> dict[str, Any]:
    """RunResult's metric fields from `predict`: accuracies over the whole test list (failed videos wrong),
    confusion and predictions of the videos that decoded, and each temporal ablation's accuracies."""
    labels = np.array([record.label for record in records], dtype=np.int64)
    metrics, scored, scores = accuracies(clip_logits[ORIGINAL], clip_video_index, labels, views_per_video)
    predicted = scores.argmax(axis=1)
    return {
        **metrics,
        "confusion": confusion_matrix(predicted, labels[scored], num_classes).tolist(),
        "predictions": [{"id": records[video].id, "label": int(labels[video]), "predicted": int(guess),
                         "confidence": float(scores[place, guess])}
                        for place, (video, guess) in enumerate(zip(scored, predicted))],
        "test_videos": len(records),
        "test_views": len(records) * views_per_video,
        "failed_test_videos": len(records) - len(scored),
        "ablations": {stream: accuracies(logits, clip_video_index, labels, views_per_video)[0]
                      for stream, logits in clip_logits.items() if stream != ORIGINAL},
    }
