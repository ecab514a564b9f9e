"""One frame's detections in a backend-neutral form, and the choice between detection backends."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import numpy as np

from distinit.pipeline.errors import ConfigError, DistinitError
from distinit.pipeline.weights.files import RANDOM_WEIGHTS, iopath_cache_path, torch_hub_checkpoint_path
from distinit.pipeline.weights.source import WeightsSource

DETECTION_BACKENDS = ("auto", "detectron2", "torchvision")
# The short side frames are decoded at and the detectors test at (both backends alike), unless min_size says
# otherwise. Not Detectron2's and torchvision's 800: video frames are small (Kinetics ~256 px short side), and
# at 800 a 340x256 frame is upscaled ~3x and a CPU run costs ~5 s per frame per teacher, 2x the cost at 512
# (measured: docs/teachers.md, "Test size of the COCO teachers"). 512 is a 2x upscale of such frames, within 0.8x of the 640-800 px COCO trained at;
# min_size=800 gives the frameworks' own test size.
DEFAULT_DETECTION_SHORT_SIDE = 512

# Its setup.py imports torch, hence no build isolation; its model_zoo imports pkg_resources, gone from setuptools 81.
DETECTRON2_INSTALL_HINT = (
    "install Detectron2 from its official repository (pip install 'setuptools<81' && pip install "
    "--no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git') or use backend=torchvision"
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


def detector_model_name(backend: str, task: str, model: str | None, teacher_name: str) -> str:
    """The model `backend` runs for `task` ("objects" or "keypoints"): `model` (a torchvision builder name or a
    Detectron2 model-zoo config path) if given, else the ResNet-50-FPN model of the paper's family."""
    if backend == "detectron2":
        from distinit.extract.teachers.detectron2_models import DETECTRON2_KEYPOINTS_CONFIG, DETECTRON2_OBJECTS_CONFIG

        return model or (DETECTRON2_OBJECTS_CONFIG if task == "objects" else DETECTRON2_KEYPOINTS_CONFIG)
    from distinit.extract.teachers.torchvision_detection import TORCHVISION_KEYPOINT_DETECTORS, TORCHVISION_OBJECT_DETECTORS

    allowed = TORCHVISION_OBJECT_DETECTORS if task == "objects" else TORCHVISION_KEYPOINT_DETECTORS
    model_name = model or allowed[0]
    if model_name not in allowed:
        raise ConfigError(
            f"teacher {teacher_name}: model {model_name!r} is not a torchvision {task} detector; "
            f"choose one of: {', '.join(allowed)}"
        )
    return model_name


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
    `max_detections` caps the detections kept per image (highest scores first)."""
    model_name = detector_model_name(backend, task, model, teacher_name)
    if backend == "detectron2":
        from distinit.extract.teachers.detectron2_models import Detectron2Detector as detector_class
    else:
        from distinit.extract.teachers.torchvision_detection import TorchvisionDetector as detector_class
    return detector_class(model_name, weights, device, min_size, max_size, score_threshold, teacher_name, max_detections)


def detector_weights_sources(
    backend: str, task: str, model: str | None, weights: str | None, teacher_name: str
) -> tuple[WeightsSource, ...]:
    """Where the detector that `backend` (auto: the one it would choose, said in the description) runs for `task`
    gets its weights; builds nothing and imports no Detectron2 for the default models."""
    if weights == RANDOM_WEIGHTS:
        return ()
    chosen = select_detection_backend(backend)
    model_name = detector_model_name(chosen, task, model, teacher_name)
    if chosen == "detectron2":
        from distinit.extract.teachers.detectron2_models import detectron2_checkpoint_url

        url = detectron2_checkpoint_url(model_name, teacher_name)
        description, cached_path = f"Detectron2 model zoo {model_name}", iopath_cache_path(url)
    else:
        from distinit.extract.teachers.torchvision_detection import torchvision_detector_weights_url

        url = torchvision_detector_weights_url(model_name)
        description, cached_path = f"torchvision {model_name} COCO_V1", torch_hub_checkpoint_path(url)
    if backend == "auto":
        reason = "detectron2 imports" if chosen == "detectron2" else "detectron2 is not installed"
        description += f" (backend {chosen}, chosen by backend=auto: {reason})"
    else:
        description += f" (backend {chosen})"
    if weights is not None:
        return (WeightsSource.given(description, weights),)
    return (WeightsSource.at(description, url, cached_path),)
