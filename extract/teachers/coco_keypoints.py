"""`coco-keypoints`: where the most confident person's 17 COCO keypoints are.

Per frame: `keypoints` (17, 3) = (x / frame width, y / frame height, confidence); when no person reaches
`person_threshold`, every keypoint sits at -1 (outside any crop) with confidence 0 and `person_present` is 0
(see keypoint_coordinates). `grid` and `sigma` do not change what is stored: they are recorded on the output
for stage two, which renders the (17, grid, grid) heatmaps over the crop each sample sees. Backends:
Detectron2 keypoint_rcnn_R_50_FPN_3x when it imports, else torchvision's keypointrcnn_resnet50_fpn
(COCO_V1); both write the same fields with the same meanings.

Test size: frames are decoded at a short side of `min_size` (default 512, both backends; in the stage key)
and the detector tests at that size (max_size caps the long side): not the frameworks' 800, which upscales
a Kinetics-size 256-px frame ~3x and doubles a CPU run's cost against 512 (see detections.py).
"""

from __future__ import annotations

import numpy as np
import torch

from distinit.extract.teachers.base import (
    Teacher,
    require_positive,
    require_unit_interval,
    resolve_device,
)
from distinit.extract.teachers.coco_classes import COCO_KEYPOINT_NAMES, NUM_COCO_KEYPOINTS, PERSON_CLASS_INDEX
from distinit.extract.teachers.detections import (
    DEFAULT_DETECTION_SHORT_SIDE,
    FrameDetections,
    build_detector,
    detector_weights_sources,
    select_detection_backend,
)
from distinit.extract.teachers.keypoint_coordinates import empty_keypoints, keypoint_outputs, person_keypoint_targets
from distinit.extract.teachers.registry import register_teacher
from distinit.pipeline.weights.source import WeightsSource

PEOPLE_KEPT_PER_FRAME = 5
PERSON_DETECTION_SCORE_THRESHOLD = 0.05  # both backends' default; person_threshold then picks the target


def frame_detections_to_keypoint_targets(
    detections: FrameDetections, frame_width: int, frame_height: int, person_threshold: float
) -> tuple[np.ndarray, int]:
    """One frame's detections -> (keypoints (17, 3) frame-relative, person_present); only person detections count."""
    is_person = detections.labels == PERSON_CLASS_INDEX
    if detections.keypoints_xy is None or not is_person.any():
        return empty_keypoints(NUM_COCO_KEYPOINTS), 0
    return person_keypoint_targets(
        detections.scores[is_person],
        detections.keypoints_xy[is_person],
        detections.keypoint_confidence[is_person],
        frame_width,
        frame_height,
        person_threshold,
    )


@register_teacher("coco-keypoints")
class CocoKeypointsTeacher(Teacher):
    def __init__(
        self,
        *,
        device: str | torch.device = "cpu",
        weights: str | None = None,
        backend: str = "auto",
        model: str | None = None,
        grid: int = 14,
        sigma: float = 1.0,
        person_threshold: float = 0.5,
        min_size: int = DEFAULT_DETECTION_SHORT_SIDE,
        max_size: int = 1333,
        batch_size: int = 4,
    ):
        positive = {"grid": grid, "sigma": sigma, "min_size": min_size, "max_size": max_size, "batch_size": batch_size}
        for option_name, value in positive.items():
            require_positive(option_name, value)
        require_unit_interval("person_threshold", person_threshold)
        self.name = "coco-keypoints"
        self.backend = select_detection_backend(backend)
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        self.grid, self.sigma, self.person_threshold = int(grid), float(sigma), float(person_threshold)
        # Only the most confident person becomes the target, and detections come out sorted by score, so
        # a few suffice; keypoint decoding per detection is the slow part of Keypoint R-CNN on a CPU.
        self.detector = build_detector(
            self.backend,
            model,
            "keypoints",
            weights,
            self.device,
            int(min_size),
            int(max_size),
            PERSON_DETECTION_SCORE_THRESHOLD,
            self.name,
            max_detections=PEOPLE_KEPT_PER_FRAME,
        )
        self.input_size = int(min_size)
        self.max_size = int(max_size)
        self.decode_short_side = int(min_size)
        self.mean, self.std = self.detector.mean, self.detector.std
        self.weights_sha256 = self.detector.weights_sha256
        self.outputs = keypoint_outputs(self.grid, self.sigma, "Keypoint R-CNN")

    @classmethod
    def weights_sources(
        cls, *, weights: str | None = None, backend: str = "auto", model: str | None = None, **_options
    ) -> tuple[WeightsSource, ...]:
        return detector_weights_sources(backend, "keypoints", model, weights, "coco-keypoints")

    def _forward_batch(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        frame_height, frame_width = frames.shape[1:3]
        keypoints, present = [], []
        for detections in self.detector(frames):
            frame_keypoints, person_present = frame_detections_to_keypoint_targets(
                detections, frame_width, frame_height, self.person_threshold
            )
            keypoints.append(frame_keypoints)
            present.append(person_present)
        return {"keypoints": np.stack(keypoints), "person_present": np.asarray(present, dtype=np.uint8)}

    def extra_config(self) -> dict:
        return {
            **super().extra_config(),
            "model": self.detector.model_name,
            "weights_url": self.detector.weights_url,
            "min_size": self.input_size,
            "max_size": self.max_size,
            "grid": self.grid,
            "sigma_cells": self.sigma,
            "person_threshold": self.person_threshold,
            "keypoint_names": list(COCO_KEYPOINT_NAMES),
        }
