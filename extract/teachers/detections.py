"""One frame's detections in a backend-neutral form, and the choice between detection backends."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import numpy as np

from pipeline.errors import ConfigError, DistinitError

DETECTION_BACKENDS = ("auto", "detectron2", "torchvision")

DETECTRON2_INSTALL_HINT = (
    "install Detectron2 from its official repository "
    "(pip install 'git+https://github.com/facebookresearch/detectron2.git') or use backend=torchvision"
)


@dataclass(frozen=True)
class FrameDetections:
    labels: np.ndarray  # (D,) int64 contiguous COCO class index 0..79; -1 = not a COCO class (ignored)
    scores: np.ndarray  # (D,) float32 detection confidence in [0, 1]
    keypoints_xy: np.ndarray | None = None  # (D, 17, 2) float32, pixels of the full frame
    keypoint_confidence: np.ndarray | None = None  # (D, 17) float32 in [0, 1] (see keypoint_coordinates)


def detectron2_is_installed() -> bool:
    return importlib.util.find_spec("detectron2") is not None


def select_detection_backend(backend: str) -> str:
    """'auto' -> detectron2 when it imports, else torchvision; an explicit choice must be available."""
    if backend not in DETECTION_BACKENDS:
        raise ConfigError(f"unknown detection backend {backend!r}; choose one of: {', '.join(DETECTION_BACKENDS)}")
    if backend == "auto":
        return "detectron2" if detectron2_is_installed() else "torchvision"
    if backend == "detectron2" and not detectron2_is_installed():
        raise DistinitError(f"backend=detectron2 but detectron2 is not importable; {DETECTRON2_INSTALL_HINT}")
    return backend


def build_detector(
    backend: str,
    model: str | None,
    task: str,
    weights: str | None,
    device,
    min_size: int,
    max_size: int,
    score_threshold: float,
    teacher_name: str,
    max_detections: int = 100,
):
    """A frozen detector for `task` ("objects" or "keypoints") on `backend` (already selected).

    `model` is backend-specific: a torchvision builder name or a Detectron2 model-zoo config path;
    None picks the ResNet-50-FPN model of the paper's family for that task. `max_detections` caps the
    detections kept per image (highest scores first)."""
    if backend == "detectron2":
        from extract.teachers.detectron2_models import (
            DETECTRON2_KEYPOINTS_CONFIG,
            DETECTRON2_OBJECTS_CONFIG,
            Detectron2Detector,
        )

        config_path = model or (DETECTRON2_OBJECTS_CONFIG if task == "objects" else DETECTRON2_KEYPOINTS_CONFIG)
        return Detectron2Detector(
            config_path, weights, device, min_size, max_size, score_threshold, teacher_name, max_detections
        )
    from extract.teachers.torchvision_detection import (
        TORCHVISION_KEYPOINT_DETECTORS,
        TORCHVISION_OBJECT_DETECTORS,
        TorchvisionDetector,
    )

    allowed = TORCHVISION_OBJECT_DETECTORS if task == "objects" else TORCHVISION_KEYPOINT_DETECTORS
    model_name = model or allowed[0]
    if model_name not in allowed:
        raise ConfigError(
            f"teacher {teacher_name}: model {model_name!r} is not a torchvision {task} detector; "
            f"choose one of: {', '.join(allowed)}"
        )
    return TorchvisionDetector(
        model_name, weights, device, min_size, max_size, score_threshold, teacher_name, max_detections
    )
