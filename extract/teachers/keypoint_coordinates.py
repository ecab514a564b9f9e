"""Keypoints -> the stored pose target, shared by every pose teacher (Keypoint R-CNN, Detectron2, BlazePose).

Stage one stores what the teacher saw, not a picture of it. Per frame, for the most confident person:

    keypoints (17, 3) float16 = (x / frame width, y / frame height, confidence) per COCO keypoint
    person_present    uint8   = 1 when a person reached `person_threshold`, else 0 (keypoints all zero)

Coordinates are continuous and relative to the FULL frame the teacher saw (0 = left/top edge, 1 =
right/bottom edge; a pixel's centre is at (i + 0.5) / width), so they hold for any resize of that frame.
Stage two (distill.keypoint_heatmaps) renders each sample's (17, G, G) heatmaps over the crop the student
sees, after crop and flip, with this teacher's grid and sigma, recorded on the output as the attributes
`heatmap_grid` and `heatmap_sigma_cells`.

Each backend's raw keypoint score becomes a confidence with a documented, monotone map:
- torchvision Keypoint R-CNN: the heatmap logit at the peak -> sigmoid(logit - 2), i.e. 0.5 at logit 2,
  the visibility threshold Detectron (1) used when drawing keypoints;
- Detectron2: the spatial-softmax probability at the peak -> p / (p + 0.05), i.e. 0.5 at 0.05, the
  threshold Detectron2's Visualizer uses;
- MediaPipe BlazePose: its landmark `visibility`, already a probability.
"""

from __future__ import annotations

import numpy as np

from distinit.extract.teachers.base import OutputSpec
from distinit.extract.teachers.coco_classes import COCO_KEYPOINT_FLIP_INDEX, COCO_KEYPOINT_NAMES, NUM_COCO_KEYPOINTS
from distinit.pipeline.shards.format import (
    KEYPOINT_FLIP_INDEX_ATTRIBUTE,
    KEYPOINT_GRID_ATTRIBUTE,
    KEYPOINT_SIGMA_ATTRIBUTE,
)

TORCHVISION_KEYPOINT_LOGIT_AT_HALF = 2.0
DETECTRON2_KEYPOINT_PROBABILITY_AT_HALF = 0.05
KEYPOINT_COLUMNS = ("x_relative", "y_relative", "confidence")
# Where a keypoint without finite coordinates goes: outside every crop, with confidence 0 (the cache
# refuses NaN, see pipeline.shards.verify).
NOWHERE = -1.0


def keypoint_outputs(grid: int, sigma: float, source: str) -> tuple[OutputSpec, OutputSpec]:
    """The two outputs every pose teacher produces, so a student's pose head fits any of them."""
    return (
        OutputSpec(
            name="keypoints",
            shape=(NUM_COCO_KEYPOINTS, len(KEYPOINT_COLUMNS)),
            dtype="float16",
            kind="keypoints",
            meaning=f"{source}: per COCO keypoint of the most confident person, (x / frame width, y / frame height, "
            f"confidence); stage two renders them as {grid}x{grid} heatmaps over the crop; all zero when nobody is seen",
            class_names=COCO_KEYPOINT_NAMES,
            attributes={KEYPOINT_GRID_ATTRIBUTE: int(grid), KEYPOINT_SIGMA_ATTRIBUTE: float(sigma),
                        KEYPOINT_FLIP_INDEX_ATTRIBUTE: list(COCO_KEYPOINT_FLIP_INDEX), "columns": list(KEYPOINT_COLUMNS)},
        ),
        OutputSpec(
            name="person_present",
            shape=(),
            dtype="uint8",
            kind="flag",
            meaning="1 when a person was detected (keypoints valid), else 0",
        ),
    )


def relative_keypoints(
    keypoints_xy: np.ndarray, keypoint_confidence: np.ndarray, frame_width: float, frame_height: float
) -> np.ndarray:
    """keypoints_xy (K, 2) in pixels of the full frame, confidences (K,) -> (K, 3) float32
    (x / frame_width, y / frame_height, confidence in [0, 1]); a non-finite keypoint goes NOWHERE."""
    keypoints_xy = np.asarray(keypoints_xy, dtype=np.float64).reshape(-1, 2)
    confidence = np.clip(np.nan_to_num(np.asarray(keypoint_confidence, dtype=np.float64).reshape(-1)), 0.0, 1.0)
    if len(confidence) != len(keypoints_xy):
        raise ValueError(f"{len(keypoints_xy)} keypoints but {len(confidence)} scores")
    relative = keypoints_xy / np.array([frame_width, frame_height], dtype=np.float64)  # (K, 2)
    finite = np.isfinite(relative).all(axis=1)
    relative[~finite] = NOWHERE
    return np.concatenate([relative, np.where(finite, confidence, 0.0)[:, None]], axis=1).astype(np.float32)


def empty_keypoints(num_keypoints: int = NUM_COCO_KEYPOINTS) -> np.ndarray:
    """The target of a frame with nobody in it: every keypoint NOWHERE with confidence 0 (and person_present = 0),
    so even a reader that ignored the flag would find no keypoint inside any crop."""
    empty = np.zeros((num_keypoints, len(KEYPOINT_COLUMNS)), dtype=np.float32)
    empty[:, :2] = NOWHERE
    return empty


def most_confident_person(person_scores: np.ndarray, threshold: float) -> int | None:
    """Index of the highest-scoring person if that score reaches `threshold`, else None."""
    person_scores = np.asarray(person_scores, dtype=np.float64).reshape(-1)
    if person_scores.size == 0:
        return None
    best = int(np.argmax(person_scores))
    return best if person_scores[best] >= threshold else None


def person_keypoint_targets(
    person_scores: np.ndarray,
    keypoints_xy: np.ndarray,
    keypoint_confidence: np.ndarray,
    frame_width: float,
    frame_height: float,
    person_threshold: float,
) -> tuple[np.ndarray, int]:
    """People detected in one frame -> (keypoints (17, 3) of the most confident person, person_present).

    person_scores (P,); keypoints_xy (P, 17, 2) in full-frame pixels (shape (0, 17, 2) when P = 0);
    keypoint_confidence (P, 17) in [0, 1].
    """
    person = most_confident_person(person_scores, person_threshold)
    if person is None:
        return empty_keypoints(np.shape(keypoints_xy)[-2]), 0
    return relative_keypoints(keypoints_xy[person], keypoint_confidence[person], frame_width, frame_height), 1


def torchvision_keypoint_confidence(keypoint_logits: np.ndarray) -> np.ndarray:
    """torchvision's `keypoints_scores` (heatmap logits at the peak) -> confidence in (0, 1)."""
    logits = np.asarray(keypoint_logits, dtype=np.float64)
    return (1.0 / (1.0 + np.exp(-(logits - TORCHVISION_KEYPOINT_LOGIT_AT_HALF)))).astype(np.float32)


def detectron2_keypoint_confidence(keypoint_probabilities: np.ndarray) -> np.ndarray:
    """Detectron2's `pred_keypoints[..., 2]` (spatial-softmax probability at the peak) -> confidence in [0, 1)."""
    probabilities = np.clip(np.asarray(keypoint_probabilities, dtype=np.float64), 0.0, None)
    return (probabilities / (probabilities + DETECTRON2_KEYPOINT_PROBABILITY_AT_HALF)).astype(np.float32)
