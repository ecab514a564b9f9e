"""Keypoints -> coarse heatmaps, shared by every pose teacher (Keypoint R-CNN, Detectron2, BlazePose).

The target for one frame is (17, G, G): for each COCO keypoint a probability distribution over a G x G
grid laid over the FULL frame (cells are frame_width / G wide and frame_height / G high, so non-square
frames give non-square cells). For keypoint k at (x, y) with confidence c in [0, 1]:

    heatmap_k = c * gaussian_k + (1 - c) * uniform

where gaussian_k is a Gaussian of `sigma` cells centred on the keypoint's continuous grid position,
normalised to sum to 1 over the grid, and uniform is 1 / G^2 everywhere. So every heatmap sums to 1: a
confident keypoint is a sharp peak, an unsure one is spread out, and a keypoint outside the frame (or
with confidence 0) is uniform ("somewhere, unknown"). When nobody is detected all 17 maps are zero and
the `person_present` flag is 0; stage two masks those frames out of the keypoint loss.

Each backend's raw keypoint score becomes a confidence with a documented, monotone map:
- torchvision Keypoint R-CNN: the heatmap logit at the peak -> sigmoid(logit - 2), i.e. 0.5 at logit 2,
  the visibility threshold Detectron (1) used when drawing keypoints;
- Detectron2: the spatial-softmax probability at the peak -> p / (p + 0.05), i.e. 0.5 at 0.05, the
  threshold Detectron2's Visualizer uses;
- MediaPipe BlazePose: its landmark `visibility`, already a probability.
"""

from __future__ import annotations

import numpy as np

from extract.teachers.coco_classes import NUM_COCO_KEYPOINTS

TORCHVISION_KEYPOINT_LOGIT_AT_HALF = 2.0
DETECTRON2_KEYPOINT_PROBABILITY_AT_HALF = 0.05


def keypoints_to_heatmaps(
    keypoints_xy: np.ndarray,
    keypoint_scores: np.ndarray,
    frame_width: float,
    frame_height: float,
    grid: int = 14,
    sigma: float = 1.0,
) -> np.ndarray:
    """keypoints_xy (K, 2) in pixels of the full frame, keypoint_scores (K,) confidences in [0, 1]
    -> (K, grid, grid) float32, each map summing to 1 (see the module docstring)."""
    keypoints_xy = np.asarray(keypoints_xy, dtype=np.float64).reshape(-1, 2)
    confidence = np.clip(np.nan_to_num(np.asarray(keypoint_scores, dtype=np.float64).reshape(-1)), 0.0, 1.0)
    if len(confidence) != len(keypoints_xy):
        raise ValueError(f"{len(keypoints_xy)} keypoints but {len(confidence)} scores")
    # Continuous grid coordinates: cell j spans [j, j + 1), so its centre is j + 0.5.
    grid_x = keypoints_xy[:, 0] / frame_width * grid
    grid_y = keypoints_xy[:, 1] / frame_height * grid
    finite = np.isfinite(grid_x) & np.isfinite(grid_y)
    inside = finite & (grid_x >= 0) & (grid_x < grid) & (grid_y >= 0) & (grid_y < grid)
    confidence = np.where(inside, confidence, 0.0)
    centres = np.arange(grid) + 0.5
    safe_x = np.where(inside, grid_x, grid / 2)[:, None]
    safe_y = np.where(inside, grid_y, grid / 2)[:, None]
    along_x = np.exp(-((centres[None, :] - safe_x) ** 2) / (2 * sigma**2))  # (K, G)
    along_y = np.exp(-((centres[None, :] - safe_y) ** 2) / (2 * sigma**2))  # (K, G)
    gaussian = along_y[:, :, None] * along_x[:, None, :]  # (K, G, G)
    gaussian /= gaussian.sum(axis=(1, 2), keepdims=True)
    uniform = 1.0 / (grid * grid)
    heatmaps = confidence[:, None, None] * gaussian + (1.0 - confidence[:, None, None]) * uniform
    return heatmaps.astype(np.float32)


def empty_heatmaps(grid: int, num_keypoints: int = NUM_COCO_KEYPOINTS) -> np.ndarray:
    """The target of a frame with nobody in it: all zeros (and person_present = 0)."""
    return np.zeros((num_keypoints, grid, grid), dtype=np.float32)


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
    grid: int,
    sigma: float,
    person_threshold: float,
) -> tuple[np.ndarray, int]:
    """People detected in one frame -> (heatmaps (17, G, G) of the most confident person, person_present).

    person_scores (P,); keypoints_xy (P, 17, 2) in full-frame pixels (shape (0, 17, 2) when P = 0);
    keypoint_confidence (P, 17) in [0, 1].
    """
    person = most_confident_person(person_scores, person_threshold)
    if person is None:
        return empty_heatmaps(grid, num_keypoints=np.shape(keypoints_xy)[-2]), 0
    heatmaps = keypoints_to_heatmaps(
        keypoints_xy[person], keypoint_confidence[person], frame_width, frame_height, grid, sigma
    )
    return heatmaps, 1


def torchvision_keypoint_confidence(keypoint_logits: np.ndarray) -> np.ndarray:
    """torchvision's `keypoints_scores` (heatmap logits at the peak) -> confidence in (0, 1)."""
    logits = np.asarray(keypoint_logits, dtype=np.float64)
    return (1.0 / (1.0 + np.exp(-(logits - TORCHVISION_KEYPOINT_LOGIT_AT_HALF)))).astype(np.float32)


def detectron2_keypoint_confidence(keypoint_probabilities: np.ndarray) -> np.ndarray:
    """Detectron2's `pred_keypoints[..., 2]` (spatial-softmax probability at the peak) -> confidence in [0, 1)."""
    probabilities = np.clip(np.asarray(keypoint_probabilities, dtype=np.float64), 0.0, None)
    return (probabilities / (probabilities + DETECTRON2_KEYPOINT_PROBABILITY_AT_HALF)).astype(np.float32)


def heatmap_peak_cells(heatmaps: np.ndarray) -> np.ndarray:
    """(K, G, G) -> (K, 2) integer (row, column) of each map's maximum; handy for tests and `inspect`."""
    num_keypoints, grid_height, grid_width = heatmaps.shape
    flat_index = heatmaps.reshape(num_keypoints, -1).argmax(axis=1)
    return np.stack([flat_index // grid_width, flat_index % grid_width], axis=1)
