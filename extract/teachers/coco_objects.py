"""`coco-objects`: which of the 80 COCO classes a frame shows, and how confidently.

Per frame: `scores` (80,) = for each class the highest score among its detections (0 when none), a soft
multi-label target; `num_confident` = how many detections reach `confident_threshold`. Detections below
`score_threshold` (the detectors' own default, 0.05) are dropped by the detector and so count as 0.
Backends: Detectron2 model zoo (faster_rcnn_R_50_FPN_3x) when it imports, else torchvision's
fasterrcnn_resnet50_fpn (COCO_V1); the outputs mean the same on both.

Test size: frames are decoded at a short side of `min_size` (default 512, both backends; in the stage key)
and the detector tests at that size (max_size caps the long side): not the frameworks' 800, which upscales
a Kinetics-size 256-px frame ~3x and doubles a CPU run's cost against 512 (see detections.py).
"""

from __future__ import annotations

import numpy as np
import torch

from distinit.extract.teachers.base import (
    OutputSpec,
    Teacher,
    require_positive,
    require_unit_interval,
    resolve_device,
)
from distinit.extract.teachers.coco_classes import COCO_CLASS_NAMES, NUM_COCO_CLASSES
from distinit.extract.teachers.detections import (
    DEFAULT_DETECTION_SHORT_SIDE,
    build_detector,
    detector_weights_sources,
    select_detection_backend,
)
from distinit.extract.teachers.registry import register_teacher
from distinit.pipeline.weights.source import WeightsSource


def detections_to_object_targets(
    labels: np.ndarray,
    scores: np.ndarray,
    num_classes: int = NUM_COCO_CLASSES,
    confident_threshold: float = 0.5,
) -> tuple[np.ndarray, int]:
    """Detections of one frame (contiguous labels 0..num_classes-1; others ignored) ->
    (per-class maximum score (num_classes,) float32, number of detections with score >= confident_threshold)."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    if labels.shape != scores.shape:
        raise ValueError(f"{labels.size} labels but {scores.size} scores")
    valid = (labels >= 0) & (labels < num_classes) & np.isfinite(scores)
    class_scores = np.zeros(num_classes, dtype=np.float32)
    np.maximum.at(class_scores, labels[valid], np.clip(scores[valid], 0.0, 1.0))
    num_confident = int(np.count_nonzero(valid & (scores >= confident_threshold)))
    return class_scores, num_confident


@register_teacher("coco-objects")
class CocoObjectsTeacher(Teacher):
    def __init__(
        self,
        *,
        device: str | torch.device = "cpu",
        weights: str | None = None,
        backend: str = "auto",
        model: str | None = None,
        min_size: int = DEFAULT_DETECTION_SHORT_SIDE,
        max_size: int = 1333,
        score_threshold: float = 0.05,
        confident_threshold: float = 0.5,
        batch_size: int = 4,
    ):
        for option_name, value in (("min_size", min_size), ("max_size", max_size), ("batch_size", batch_size)):
            require_positive(option_name, value)
        require_unit_interval("score_threshold", score_threshold)
        require_unit_interval("confident_threshold", confident_threshold)
        self.name = "coco-objects"
        self.backend = select_detection_backend(backend)
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        self.score_threshold = float(score_threshold)
        self.confident_threshold = float(confident_threshold)
        self.detector = build_detector(
            self.backend,
            model,
            "objects",
            weights,
            self.device,
            int(min_size),
            int(max_size),
            self.score_threshold,
            self.name,
        )
        self.input_size = int(min_size)
        self.max_size = int(max_size)
        self.decode_short_side = int(min_size)
        self.mean, self.std = self.detector.mean, self.detector.std
        self.weights_sha256 = self.detector.weights_sha256
        self.outputs = (
            OutputSpec(
                name="scores",
                shape=(NUM_COCO_CLASSES,),
                dtype="float16",
                kind="multilabel_scores",
                meaning="per COCO class, the highest detection score in the frame (0 when not detected)",
                class_names=COCO_CLASS_NAMES,
            ),
            OutputSpec(
                name="num_confident",
                shape=(),
                dtype="int16",
                kind="count",
                meaning=f"number of detections with score >= {self.confident_threshold}",
            ),
        )

    @classmethod
    def weights_sources(
        cls, *, weights: str | None = None, backend: str = "auto", model: str | None = None, **_options
    ) -> tuple[WeightsSource, ...]:
        return detector_weights_sources(backend, "objects", model, weights, "coco-objects")

    def _forward_batch(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        class_scores, counts = [], []
        for detections in self.detector(frames):
            scores, count = detections_to_object_targets(
                detections.labels, detections.scores, NUM_COCO_CLASSES, self.confident_threshold
            )
            class_scores.append(scores)
            counts.append(count)
        return {"scores": np.stack(class_scores), "num_confident": np.asarray(counts, dtype=np.int16)}

    def extra_config(self) -> dict:
        return {
            **super().extra_config(),
            "model": self.detector.model_name,
            "weights_url": self.detector.weights_url,
            "min_size": self.input_size,
            "max_size": self.max_size,
            "score_threshold": self.score_threshold,
            "confident_threshold": self.confident_threshold,
        }
