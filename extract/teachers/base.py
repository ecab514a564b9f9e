"""What every teacher is: a frozen 2D model that turns a batch of RGB frames into named soft targets.

A teacher carries its own input size and normalisation (timm's DistillationTeacher does the same),
declares each output it produces (`OutputSpec`), and describes itself as JSON so the shard writer can
store those facts as HDF5 attributes next to the outputs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as functional

from distinit.pipeline.devices import resolve_device  # noqa: F401  (the teacher modules import it from here)
from distinit.pipeline.errors import ConfigError
from distinit.pipeline.weights.source import WeightsSource

logger = logging.getLogger(__name__)

# "keypoints": (K, 3) = (x / frame width, y / frame height, confidence) per keypoint; stage two renders
# them as heatmaps over the crop the student sees (distill.keypoint_heatmaps).
# "embedding": (D,) image features (CLIP, DINOv2, a classifier's pooled features) for feature distillation.
OUTPUT_KINDS = ("logits", "multilabel_scores", "keypoints", "count", "flag", "embedding")

# The part of a frame a teacher's input shows: (x0, y0, x1, y1) as fractions of the frame's width and height.
ViewBox = tuple[float, float, float, float]
WHOLE_FRAME: ViewBox = (0.0, 0.0, 1.0, 1.0)


@dataclass(frozen=True)
class OutputSpec:
    name: str  # HDF5 dataset name, e.g. "logits", "scores", "num_confident", "keypoints", "person_present"
    shape: tuple[int, ...]  # per-frame shape, e.g. (1000,), (80,), (), (17, 3)
    dtype: str  # numpy dtype stored: "float16" for soft outputs, "int16"/"uint8" for counts and flags
    kind: str  # how stage two treats it: one of OUTPUT_KINDS
    meaning: str  # one line for humans
    class_names: tuple[str, ...] | None = None
    # Facts stage two needs to use the output, e.g. a keypoints output's heatmap grid and sigma.
    attributes: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.kind not in OUTPUT_KINDS:
            raise ValueError(f"output {self.name!r} has kind {self.kind!r}; expected one of {OUTPUT_KINDS}")

    def returned_dtype(self) -> np.dtype:
        """Soft outputs come back as float32 (stored as float16); counts and flags in their stored dtype."""
        stored = np.dtype(self.dtype)
        return np.dtype(np.float32) if stored.kind == "f" else stored

    def describe(self) -> dict[str, Any]:
        described = {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "kind": self.kind,
            "meaning": self.meaning,
            "class_names": list(self.class_names) if self.class_names is not None else None,
        }
        if self.attributes:
            described["attributes"] = dict(self.attributes)
        return described


class Teacher:
    """Base class. Subclasses set the attributes below in __init__ and implement `_forward_batch`.

    `kind` is the registered name (what the teacher is); `name` is this instance's name (the HDF5 group, the
    student's head and the loss weight are keyed by it). They are equal unless a run names instances
    (`teachers: [places=places365, objects=imagenet-torchvision]`); `create_teacher` sets both."""

    name: str
    kind: str
    backend: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    decode_short_side: int
    outputs: tuple[OutputSpec, ...]
    weights_sha256: str
    device: torch.device
    batch_size: int = 32
    # (resize_size, crop_size) of the centre crop `_forward_batch` takes (resize_short_side_and_center_crop), or
    # None for a teacher that sees the whole frame (detectors, pose, a squashed embedding view): `view_box`.
    center_crop: tuple[int, int] | None = None

    def __call__(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        """frames: uint8 (N, H, W, 3) RGB -> {output name: (N, *spec.shape)}, computed in chunks of batch_size."""
        _check_frames(frames, self.name)
        if len(frames) == 0:
            return {spec.name: np.zeros((0, *spec.shape), spec.returned_dtype()) for spec in self.outputs}
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(frames), self.batch_size):
                chunks.append(self._forward_batch(frames[start : start + self.batch_size]))
        results = {}
        for spec in self.outputs:
            values = np.concatenate([chunk[spec.name] for chunk in chunks], axis=0)
            expected_shape = (len(frames), *spec.shape)
            if values.shape != expected_shape:
                raise RuntimeError(
                    f"teacher {self.name} output {spec.name} has shape {values.shape}, not {expected_shape}"
                )
            results[spec.name] = values.astype(spec.returned_dtype(), copy=False)
        return results

    def _forward_batch(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def view_box(self, height: int, width: int) -> ViewBox:
        """The part of an H x W frame this teacher's outputs come from, (x0, y0, x1, y1) in [0, 1] of the frame:
        its centre crop's box (stage two keeps the student's crop inside it), or the whole frame."""
        if self.center_crop is None:
            return WHOLE_FRAME
        return center_crop_view_box(height, width, *self.center_crop)

    def extra_config(self) -> dict[str, Any]:
        """Options that change the outputs (score thresholds, keypoint heatmap grid, ...); subclasses extend.
        batch_size is left out on purpose: it changes speed, not targets, so it must not change a stage key."""
        return {}

    def describe(self) -> dict[str, Any]:
        """JSON-able facts written as HDF5 attributes and hashed into the stage key."""
        return {
            "name": self.name,
            "kind": getattr(self, "kind", self.name),
            "backend": self.backend,
            "weights_sha256": self.weights_sha256,
            "input_size": self.input_size,
            "mean": [float(value) for value in self.mean],
            "std": [float(value) for value in self.std],
            "decode_short_side": self.decode_short_side,
            "outputs": [spec.describe() for spec in self.outputs],
            "config": self.extra_config(),
        }

    def output_spec(self, name: str) -> OutputSpec:
        for spec in self.outputs:
            if spec.name == name:
                return spec
        raise KeyError(f"teacher {self.name} has no output {name!r}")

    def close(self) -> None:
        """Release resources held outside torch (MediaPipe graphs); a no-op for torch teachers."""

    @classmethod
    def weights_sources(cls, **options: Any) -> tuple[WeightsSource, ...]:
        """The weight files this teacher would load with these options (its defaults where not given), without
        building it or touching the network: for `distinit teachers`. Subclasses with weights override it."""
        return ()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, backend={self.backend!r}, device={self.device})"


def _check_frames(frames: np.ndarray, teacher_name: str) -> None:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        description = f"{type(frames).__name__} {getattr(frames, 'dtype', '')} {getattr(frames, 'shape', '')}"
        raise ValueError(f"teacher {teacher_name} expects uint8 frames of shape (N, H, W, 3); got {description}")



def freeze(module: torch.nn.Module) -> torch.nn.Module:
    """Eval mode and no gradients: a teacher never trains and its batch-norm statistics never move."""
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


def require_positive(option_name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"teacher option {option_name}={value!r} must be positive")


def require_unit_interval(option_name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"teacher option {option_name}={value!r} must lie in [0, 1]")


def frames_to_tensor(frames: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) in 0..1 on `device` (the copy to the GPU is done in uint8)."""
    images = torch.from_numpy(np.ascontiguousarray(frames)).to(device, non_blocking=True)
    return images.permute(0, 3, 1, 2).float().div_(255.0)


def center_crop_geometry(height: int, width: int, resize_size: int, crop_size: int) -> tuple[int, int, int, int]:
    """(resized height, resized width, top, left) of the standard evaluation view of an H x W frame, as
    torchvision's Resize(resize_size) + CenterCrop(crop_size) compute them: the long side truncated,
    int(resize_size * long / short), not rounded (340x256 -> 297x224, not 298), and the crop's corner rounded
    half to even (Python's round, as torchvision's). The crop and its `center_crop_view_box` both come from here."""
    short_side, long_side = min(height, width), max(height, width)
    new_long = max(crop_size, int(resize_size * long_side / short_side))
    new_short = max(crop_size, resize_size)
    new_height, new_width = (new_short, new_long) if height <= width else (new_long, new_short)
    top, left = round((new_height - crop_size) / 2.0), round((new_width - crop_size) / 2.0)
    return new_height, new_width, top, left


def center_crop_view_box(height: int, width: int, resize_size: int, crop_size: int) -> ViewBox:
    """The part of an H x W frame that `resize_short_side_and_center_crop` keeps, as (x0, y0, x1, y1) in [0, 1] of
    the frame: the resize scales the whole frame, so the crop's pixel box over the resized size is that fraction."""
    new_height, new_width, top, left = center_crop_geometry(height, width, resize_size, crop_size)
    return (left / new_width, top / new_height, (left + crop_size) / new_width, (top + crop_size) / new_height)


def resize_short_side_and_center_crop(
    images: torch.Tensor, resize_size: int, crop_size: int, interpolation: str = "bilinear"
) -> torch.Tensor:
    """The standard ImageNet evaluation view: resize the short side, then take the central square, pixel for
    pixel as torchvision's Resize(resize_size) + CenterCrop(crop_size) make it (which the PIL pipelines of timm,
    open_clip and the teachers' papers use too); the arithmetic is `center_crop_geometry`'s."""
    height, width = images.shape[-2:]
    new_height, new_width, top, left = center_crop_geometry(height, width, resize_size, crop_size)
    if (new_height, new_width) != (height, width):
        smooth = interpolation in ("bilinear", "bicubic")
        images = functional.interpolate(
            images,
            size=(new_height, new_width),
            mode=interpolation,
            align_corners=False if smooth else None,
            antialias=smooth,  # downscaling without it aliases, and torchvision's eval transforms use it
        )
    return images[..., top : top + crop_size, left : left + crop_size]


def normalise(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    mean_tensor = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std_tensor = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images - mean_tensor) / std_tensor
