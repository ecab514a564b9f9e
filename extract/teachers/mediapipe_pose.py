"""`mediapipe-pose`: BlazePose (MediaPipe 0.10.21, real weights inside the wheel) as a pose teacher.

Optional extra: `pip install distinit[pose]`. BlazePose finds one person and 33 landmarks (x, y as a
fraction of the frame, plus a visibility probability); we keep the 17 that COCO also has and write the
same outputs as `coco-keypoints` (keypoints + person_present, see keypoint_coordinates), so a student's
pose head can be taught by either. MediaPipe runs on the CPU, one frame at a time (its graph is not batched); `static_image_mode`
treats every sampled frame on its own, as the other teachers do.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from distinit.extract.teachers.base import Teacher, require_positive, require_unit_interval
from distinit.extract.teachers.coco_classes import NUM_COCO_KEYPOINTS
from distinit.extract.teachers.keypoint_coordinates import NOWHERE, empty_keypoints, keypoint_outputs
from distinit.extract.teachers.registry import register_teacher
from distinit.pipeline.weights.files import sha256_files
from distinit.pipeline.weights.source import WeightsSource
from distinit.pipeline.errors import ConfigError, DistinitError

logger = logging.getLogger(__name__)

# BlazePose landmark index of each COCO keypoint, in COCO order (nose, eyes, ears, shoulders, elbows,
# wrists, hips, knees, ankles; "left" is the person's left in both).
MEDIAPIPE_TO_COCO_KEYPOINTS: tuple[int, ...] = (0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28)
NUM_MEDIAPIPE_LANDMARKS = 33
_LANDMARK_MODEL_FILES = {
    0: "pose_landmark_lite.tflite",
    1: "pose_landmark_full.tflite",
    2: "pose_landmark_heavy.tflite",
}
_MODEL_ASSET_URL = "https://storage.googleapis.com/mediapipe-assets/"


def _import_mediapipe():
    try:
        import mediapipe
    except ImportError:
        raise DistinitError("teacher mediapipe-pose needs MediaPipe; pip install distinit[pose]") from None
    return mediapipe


def _model_files_under(package_folder: Path, model_complexity: int) -> list[Path]:
    modules = package_folder / "modules"
    return [
        modules / "pose_detection" / "pose_detection.tflite",
        modules / "pose_landmark" / _LANDMARK_MODEL_FILES[model_complexity],
    ]


def mediapipe_model_files(mediapipe_module, model_complexity: int) -> list[Path]:
    """The detector and landmark .tflite files BlazePose will load; only complexity 1 ships in the wheel."""
    files = _model_files_under(Path(mediapipe_module.__file__).parent, model_complexity)
    for path in files:
        if not path.is_file():  # MediaPipe would try to download it; we never download at run time
            raise DistinitError(
                f"teacher mediapipe-pose: model file {path} is missing; download {_MODEL_ASSET_URL}{path.name} "
                "to that path or use model_complexity=1 (shipped in the wheel)"
            )
    return files


def landmarks_to_coco_keypoints(landmarks: np.ndarray) -> np.ndarray:
    """BlazePose landmarks (33, 3) = (x fraction, y fraction, visibility) -> the stored COCO keypoints
    (17, 3) = (x / frame width, y / frame height, confidence): BlazePose's fractions already are that."""
    landmarks = np.asarray(landmarks, dtype=np.float64).reshape(NUM_MEDIAPIPE_LANDMARKS, 3)
    selected = landmarks[list(MEDIAPIPE_TO_COCO_KEYPOINTS)]  # (17, 3)
    finite = np.isfinite(selected[:, :2]).all(axis=1)
    relative = np.where(finite[:, None], selected[:, :2], NOWHERE)
    confidence = np.where(finite, np.clip(np.nan_to_num(selected[:, 2]), 0.0, 1.0), 0.0)
    return np.concatenate([relative, confidence[:, None]], axis=1).astype(np.float32)


@register_teacher("mediapipe-pose")
class MediaPipePoseTeacher(Teacher):
    def __init__(
        self,
        *,
        device: str | torch.device = "cpu",
        weights: str | None = None,
        model_complexity: int = 1,
        grid: int = 14,
        sigma: float = 1.0,
        person_threshold: float = 0.5,
        batch_size: int = 32,
    ):
        if weights is not None:
            raise ConfigError("teacher mediapipe-pose uses the models inside the mediapipe wheel; do not pass weights")
        if model_complexity not in _LANDMARK_MODEL_FILES:
            raise ConfigError(f"teacher mediapipe-pose: model_complexity={model_complexity!r} must be 0, 1 or 2")
        for option_name, value in (("grid", grid), ("sigma", sigma), ("batch_size", batch_size)):
            require_positive(option_name, value)
        require_unit_interval("person_threshold", person_threshold)
        mediapipe = _import_mediapipe()
        if torch.device(device).type != "cpu":
            logger.info("teacher mediapipe-pose runs on the CPU (MediaPipe's Python API has no CUDA path)")
        self.name = "mediapipe-pose"
        self.backend = "mediapipe"
        self.device = torch.device("cpu")
        self.batch_size = int(batch_size)
        self.model_complexity = int(model_complexity)
        self.grid, self.sigma, self.person_threshold = int(grid), float(sigma), float(person_threshold)
        self.weights_sha256 = sha256_files(mediapipe_model_files(mediapipe, self.model_complexity))
        self.mediapipe_version = getattr(mediapipe, "__version__", "unknown")
        # BlazePose's landmark model sees a 256 x 256 crop around the person and scales pixels to [-1, 1]
        # itself; these values describe that, the graph does its own preprocessing.
        self.input_size = 256
        self.decode_short_side = 256
        self.mean = (0.5, 0.5, 0.5)
        self.std = (0.5, 0.5, 0.5)
        self.outputs = keypoint_outputs(self.grid, self.sigma, "BlazePose (33 landmarks mapped to COCO)")
        self._pose = mediapipe.solutions.pose.Pose(
            static_image_mode=True,
            model_complexity=self.model_complexity,
            enable_segmentation=False,
            min_detection_confidence=self.person_threshold,
        )

    @classmethod
    def weights_sources(cls, *, model_complexity: int = 1, **_options) -> tuple[WeightsSource, ...]:
        """The .tflite files inside the mediapipe wheel, found without importing mediapipe (slow, and maybe absent)."""
        import importlib.util

        if model_complexity not in _LANDMARK_MODEL_FILES:
            raise ConfigError(f"teacher mediapipe-pose: model_complexity={model_complexity!r} must be 0, 1 or 2")
        spec = importlib.util.find_spec("mediapipe")
        if spec is None or not spec.submodule_search_locations:
            names = ("pose_detection.tflite", _LANDMARK_MODEL_FILES[model_complexity])
            origin = "pip package mediapipe (pip install distinit[pose])"
            return tuple(WeightsSource(f"BlazePose {name}", origin, None, False) for name in names)
        package_folder = Path(list(spec.submodule_search_locations)[0])
        sources = []
        for path in _model_files_under(package_folder, model_complexity):
            # Only complexity 1's files ship in the wheel; the others are copied in by hand (never downloaded).
            origin = "pip package mediapipe" if path.is_file() else f"copy {_MODEL_ASSET_URL}{path.name} by hand"
            sources.append(WeightsSource(f"BlazePose {path.name}", origin, path, path.is_file()))
        return tuple(sources)

    def _forward_batch(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        keypoints, present = [], []
        for frame in frames:
            result = self._pose.process(np.ascontiguousarray(frame))
            if result.pose_landmarks is None:
                keypoints.append(empty_keypoints(NUM_COCO_KEYPOINTS))
                present.append(0)
                continue
            landmarks = np.array([(mark.x, mark.y, mark.visibility) for mark in result.pose_landmarks.landmark])
            keypoints.append(landmarks_to_coco_keypoints(landmarks))
            present.append(1)
        return {"keypoints": np.stack(keypoints), "person_present": np.asarray(present, dtype=np.uint8)}

    def extra_config(self) -> dict:
        return {
            **super().extra_config(),
            "mediapipe_version": self.mediapipe_version,
            "model_complexity": self.model_complexity,
            "grid": self.grid,
            "sigma_cells": self.sigma,
            "person_threshold": self.person_threshold,
            "landmark_indices": list(MEDIAPIPE_TO_COCO_KEYPOINTS),
        }

    def close(self) -> None:
        if self._pose is not None:
            self._pose.close()
            self._pose = None
