"""Train-time crop and flip of a clip and of its targets, and the RGB normalisation the students expect.

Frames are (T, H, W, 3) uint8 here, already resized so the short side is the clip's short_side; the
crop is taken from them (random for training, central for evaluation). Given the part of the frame the
teachers saw (their view box, stored by stage one) and a fraction f, the crop keeps at least f of its area
inside that box (`crop_box`): a classifier teacher saw only the centre square of a wide frame, and the student
should not be asked for its label from pixels it never saw. A flip mirrors the cropped pixels themselves, so
the student still sees only pixels from inside the box (mirrored, as a teacher shown the mirrored frame would).

RGB clips leave the DataLoader workers as the decoder wrote them, (T, H, W, 3) uint8 (`rgb_clip_tensor`: the
crop is a view, not a copy), with a flag saying whether they are to be mirrored: the DataLoader's collate makes
the one host copy, into a (B, T, H, W, 3) batch, a quarter of the bytes of float32 through the workers' shared
memory and the host-to-device copy. On the device `video_to_device` mirrors the flagged clips, views the batch
as (B, 3, T, H, W) (physically channels_last_3d already, the layout the students run in on CUDA) and normalises
it (`normalise_video`), to the values `rgb_to_tensor` gives on the host (the same float32 operations in the same
order; a mirror only moves bytes).

Heatmap targets are drawn over the crop itself, from the keypoint coordinates stage one stored
(distill.keypoint_heatmaps), so they follow the crop. A flip mirrors the drawn maps along the width
axis and swaps left/right keypoint channels (`flip_targets`), exactly as the frames are mirrored.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from distinit.distill.windows import KIND_HEATMAPS
from distinit.pipeline.errors import ConfigError
from distinit.pipeline.shards import ShardError
from distinit.pipeline.shards.format import KEYPOINT_FLIP_INDEX_ATTRIBUTE as FLIP_INDEX_ATTRIBUTE

logger = logging.getLogger(__name__)

# torchvision's video models (R3D/R(2+1)D/MC3, Kinetics-trained) normalise with these.
VIDEO_MEAN = (0.43216, 0.394666, 0.37645)
VIDEO_STD = (0.22803, 0.22145, 0.216989)
FLIP_PROBABILITY = 0.5


# Area fractions are compared with this slack, so a crop that fits its box exactly is inside despite float rounding.
INSIDE_TOLERANCE = 1e-6
ViewBox = tuple[float, float, float, float]  # (x0, y0, x1, y1) as fractions of the frame's width and height
WHOLE_FRAME: ViewBox = (0.0, 0.0, 1.0, 1.0)


def crop_box(height: int, width: int, crop: int, rng: np.random.Generator | None, *,
             view_box: Sequence[float] | None = None, min_inside: float = 0.0) -> tuple[int, int]:
    """(top, left) of a crop x crop window: uniform with `rng`, centred without. With a `view_box` and
    `min_inside` f > 0, only windows with at least f of their area inside the box are drawn (uniform top among
    those possible, then uniform left given the top), and without `rng` the one nearest the box's centre. Where f
    cannot be met (a box narrower than the crop, or a fraction of a pixel off the pixel grid) as much as the frame
    allows is asked, and along an axis where the box is narrower than the crop, a crop that must cover all of it
    is centred on it. f = 0 draws exactly as without a box."""
    if crop > height or crop > width:
        raise ValueError(f"crop {crop} does not fit a {width}x{height} frame")
    if view_box is None or min_inside <= 0.0:
        if rng is None:
            return (height - crop) // 2, (width - crop) // 2
        return int(rng.integers(height - crop + 1)), int(rng.integers(width - crop + 1))
    x0, y0, x1, y1 = (float(value) for value in view_box)
    rows = _inside_fractions(height, crop, y0 * height, y1 * height)  # (height - crop + 1,)
    columns = _inside_fractions(width, crop, x0 * width, x1 * width)  # (width - crop + 1,)
    needed = min(float(min_inside), rows.max() * columns.max()) - INSIDE_TOLERANCE
    tops = np.flatnonzero(rows * columns.max() >= needed)
    top = _pick(tops, rows, (y0 + y1) * height / 2 - crop / 2, (y1 - y0) * height < crop, rng)
    lefts = np.flatnonzero(rows[top] * columns >= needed)
    left = _pick(lefts, columns, (x0 + x1) * width / 2 - crop / 2, (x1 - x0) * width < crop, rng)
    return top, left


def _inside_fractions(length: int, crop: int, low: float, high: float) -> np.ndarray:
    """For every start p in 0 .. length - crop, the fraction of [p, p + crop) inside [low, high) (pixels)."""
    starts = np.arange(length - crop + 1, dtype=np.float64)
    return np.clip(np.minimum(starts + crop, high) - np.maximum(starts, low), 0.0, None) / crop


def _pick(candidates: np.ndarray, fractions: np.ndarray, centred: float, box_narrower: bool,
          rng: np.random.Generator | None) -> int:
    """A start among `candidates` (never empty: they hold the best start): random with `rng`; else, or when the box
    is narrower than the crop and every candidate covers all of it (the fraction asked pins the crop to the box),
    the one nearest the box-centred start `centred` (ties to the lower start)."""
    pinned = box_narrower and fractions[candidates].min() >= fractions.max() - INSIDE_TOLERANCE
    if rng is None or pinned:
        return int(candidates[np.argmin(np.abs(candidates - centred))])
    return int(candidates[rng.integers(len(candidates))])


def inside_fraction(top: int, left: int, crop: int, height: int, width: int, view_box: Sequence[float]) -> float:
    """The fraction of the crop's area that lies inside `view_box` of an H x W frame."""
    x0, y0, x1, y1 = (float(value) for value in view_box)
    rows = max(0.0, min(top + crop, y1 * height) - max(top, y0 * height)) / crop
    columns = max(0.0, min(left + crop, x1 * width) - max(left, x0 * width)) / crop
    return rows * columns


def intersect_view_boxes(boxes: Sequence[np.ndarray]) -> ViewBox:
    """The part of the frame every one of `boxes` ((N, 4) arrays, one per teacher and row) covers: the whole frame
    for none; an empty intersection (teachers that saw disjoint parts) shrinks to a line, inside none of it."""
    if not boxes:
        return WHOLE_FRAME
    stacked = np.concatenate([np.asarray(box, dtype=np.float64).reshape(-1, 4) for box in boxes])  # (M, 4)
    x0, y0, x1, y1 = (float(value) for value in box_intersection(stacked, axis=0))
    return x0, y0, x1, y1


def box_intersection(boxes: np.ndarray, axis: int) -> np.ndarray:
    """The intersection of (..., 4) float64 boxes along `axis`; an empty one shrinks to a line (x1 >= x0, y1 >= y0)."""
    low = boxes[..., :2].max(axis=axis)
    return np.concatenate([low, np.maximum(boxes[..., 2:].min(axis=axis), low)], axis=-1)


def crop_frames(frames: np.ndarray, top: int, left: int, crop: int) -> np.ndarray:
    """(T, H, W, C) -> (T, crop, crop, C), a view."""
    return frames[:, top : top + crop, left : left + crop]


def flip_frames(frames: np.ndarray) -> np.ndarray:
    """Mirror (T, H, W, C) frames left-right."""
    return frames[:, :, ::-1]


def keypoint_flip_permutation(
    class_names: Sequence[str] | None, channels: int, flip_index: Sequence[int] | None = None
) -> np.ndarray:
    """Channel order of the mirrored image's heatmaps: mirrored[k] = heatmaps[permutation[k]].

    The teacher's own `flip_index` (stored with its keypoints output) wins; without one, named channels swap
    `left_X` with `right_X`; anything else keeps its order (with a warning).
    """
    if flip_index is not None:
        permutation = np.asarray(flip_index, dtype=np.int64)
        if permutation.shape != (channels,) or sorted(permutation.tolist()) != list(range(channels)):
            raise ShardError(f"flip_index {list(flip_index)} stored with the keypoints is not a permutation of "
                             f"{channels} keypoint channels; re-run extract")
        return permutation
    if class_names is None:
        logger.warning("%d unnamed heatmap channels: a flip mirrors them but cannot swap left and right", channels)
        return np.arange(channels, dtype=np.int64)
    names = list(class_names)
    position = {name: index for index, name in enumerate(names)}
    permutation = np.arange(len(names), dtype=np.int64)
    for index, name in enumerate(names):
        for side, other in (("left", "right"), ("right", "left")):
            if name.startswith(side):
                partner = other + name[len(side):]
                if partner in position:
                    permutation[index] = position[partner]
    if (permutation == np.arange(len(names))).all():
        logger.warning("heatmap channels %s have no left/right pairs: a flip mirrors them without swapping", names[:3])
    return permutation


def heatmap_flip_plan(teachers: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    """`<teacher>/<output>` -> channel permutation, for every output of kind "heatmaps"."""
    plan = {}
    for teacher in teachers:
        for output in teacher["outputs"]:
            if output.get("kind") == KIND_HEATMAPS:
                shape = tuple(output["shape"])
                flip_index = (output.get("attributes") or {}).get(FLIP_INDEX_ATTRIBUTE)
                key = f"{teacher['name']}/{output['name']}"
                try:
                    plan[key] = keypoint_flip_permutation(output.get("class_names"), shape[0], flip_index)
                except ShardError as error:
                    raise ShardError(f"teacher output {key}: {error}") from None
    return plan


def flip_targets(targets: Mapping[str, np.ndarray], plan: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Targets of the mirrored clip: heatmaps (K, G, G) swap left/right channels and mirror the width
    axis; every other output (class scores, flags, counts) does not change under a mirror."""
    flipped = dict(targets)
    for key, permutation in plan.items():
        if key in flipped:
            flipped[key] = np.ascontiguousarray(np.asarray(flipped[key])[permutation][..., ::-1])
    return flipped


@dataclasses.dataclass(frozen=True)
class Normalisation:
    """The per-channel (x - mean) / std, x in [0, 1] RGB, that a network's input expects.

    It belongs to the weights, not the data: distilled students keep the video mean/std they were
    trained with, an inflated 2D network the normalisation of its ImageNet training."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self):
        mean, std = tuple(float(value) for value in self.mean), tuple(float(value) for value in self.std)
        if len(mean) != 3 or len(std) != 3 or not all(value > 0 for value in std):
            raise ConfigError(f"input normalisation needs 3 means and 3 positive stds, got mean {mean} std {std}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, values: Any) -> "Normalisation":
        if isinstance(values, Normalisation):
            return values
        if not isinstance(values, Mapping) or set(values) != {"mean", "std"}:
            raise ConfigError(f"input normalisation must be {{'mean': [3 values], 'std': [3 values]}}, got {values!r}")
        try:
            return cls(tuple(values["mean"]), tuple(values["std"]))
        except (TypeError, ValueError):
            raise ConfigError(f"input normalisation must hold numbers, got {values!r}") from None


VIDEO_NORMALISATION = Normalisation(VIDEO_MEAN, VIDEO_STD)


@functools.lru_cache(maxsize=16)
def normalisation_table(normalisation: Normalisation = VIDEO_NORMALISATION) -> np.ndarray:
    """(3, 256) float32, read-only: channel c's normalised value of each byte, (byte / 255 - mean_c) / std_c."""
    scaled = np.arange(256, dtype=np.float32) / np.float32(255.0)
    mean = np.array(normalisation.mean, dtype=np.float32)[:, None]
    std = np.array(normalisation.std, dtype=np.float32)[:, None]
    table = (scaled[None, :] - mean) / std
    table.setflags(write=False)
    return table


def rgb_to_tensor(frames: np.ndarray, normalisation: Normalisation = VIDEO_NORMALISATION) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (3, T, H, W) float32, scaled to [0, 1] and normalised with `normalisation`
    (default the video mean/std the distilled students are trained with).

    A table lookup per channel: as exact as the arithmetic, and ~15x faster than torch's elementwise
    ops when those run on a contended intra-op thread pool (measured 2.3 ms against 32 ms for an
    8 x 112 x 112 clip on 2 busy cores; 0.7 ms with one torch thread).
    """
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected (T, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    table = normalisation_table(normalisation)
    video = np.empty((3, *frames.shape[:3]), dtype=np.float32)  # (3, T, H, W)
    for channel in range(3):
        np.take(table[channel], frames[..., channel], out=video[channel])
    return torch.from_numpy(video)


def rgb_clip_tensor(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 frames (a crop view too) -> a tensor over the same memory: a clip as it leaves a loader
    worker. Collating makes the one copy, into a (B, T, H, W, 3) batch."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected (T, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    return torch.from_numpy(frames)


def channels_first(video: torch.Tensor) -> torch.Tensor:
    """A batch of uint8 RGB clips as (B, 3, T, H, W): (B, T, H, W, 3), as the loaders collate them, becomes a view
    (channels_last_3d: no copy); (B, 3, T, H, W) stays as it is. A batch whose last axis holds 3 is taken for the
    former (a clip 3 pixels wide is no network's input)."""
    if video.dtype != torch.uint8 or video.dim() != 5 or 3 not in (video.shape[1], video.shape[-1]):
        raise ValueError(f"expected (B, T, H, W, 3) or (B, 3, T, H, W) uint8 clips, got {tuple(video.shape)} "
                         f"{video.dtype}")
    return video.permute(0, 4, 1, 2, 3) if video.shape[-1] == 3 else video  # (B, 3, T, H, W)


@functools.lru_cache(maxsize=16)
def _device_constants(normalisation: Normalisation, device: torch.device) -> tuple[torch.Tensor, ...]:
    """(255, mean, std) as float32 tensors on `device`, made once: creating them each step would copy from the host
    (a sync on CUDA), and a CPU scalar divisor would let CUDA multiply by its reciprocal instead of dividing."""
    shape = (1, 3, 1, 1, 1)
    return (torch.full((), 255.0, dtype=torch.float32, device=device),
            torch.tensor(normalisation.mean, dtype=torch.float32, device=device).view(shape),
            torch.tensor(normalisation.std, dtype=torch.float32, device=device).view(shape))


def normalise_video(video: torch.Tensor, normalisation: Normalisation = VIDEO_NORMALISATION, *,
                    memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """uint8 RGB clips, (B, T, H, W, 3) or (B, 3, T, H, W) (`channels_first`), on any device -> (B, 3, T, H, W)
    float32 on that device, (byte / 255 - mean) / std in `memory_format`: rgb_to_tensor's values (its table holds
    the same float32 operations in the same order)."""
    return _normalise(channels_first(video), normalisation, memory_format)


def _normalise(video: torch.Tensor, normalisation: Normalisation, memory_format: torch.memory_format,
               flipped: list[bool] | None = None) -> torch.Tensor:
    """(B, 3, T, H, W) uint8 -> float32 normalised, the clips `flipped` names mirrored on the way: the mirror rides
    on the one float32 conversion, a mirrored clip flipped in uint8 first (a quarter of the float bytes)."""
    scale, mean, std = _device_constants(normalisation, video.device)
    if flipped is None or not any(flipped):
        floats = video.to(torch.float32, memory_format=memory_format)
    else:
        floats = torch.empty(video.shape, dtype=torch.float32, device=video.device, memory_format=memory_format)
        for row, flip in enumerate(flipped):
            floats[row].copy_(video[row].flip(-1) if flip else video[row])
    return floats.div_(scale).sub_(mean).div_(std)


def video_to_device(video: torch.Tensor, device: torch.device, normalisation: Normalisation | None, *,
                    channels_last: bool = False, flipped: torch.Tensor | None = None) -> torch.Tensor:
    """A batch of clips as the network takes it, (B, C, T, H, W) on `device`. uint8 RGB clips ((B, T, H, W, 3) as
    the loaders collate them, or (B, 3, T, H, W)) are copied without waiting (from pinned memory on CUDA), mirrored
    left-right where `flipped` ((B,) bool, the batch's "flipped": a host tensor, so reading it waits for nothing)
    says, and normalised there with `normalisation`; with `channels_last` the result is channels_last_3d,
    which (B, T, H, W, 3) bytes already are. Anything else (flow, clips normalised on the host: mirrored on the
    host already, so `flipped` is not applied) is copied as it is."""
    video = video.to(device, non_blocking=True)
    memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
    if video.dtype != torch.uint8:
        return video.contiguous(memory_format=memory_format) if channels_last else video
    if normalisation is None:
        raise ValueError("uint8 RGB clips need an input normalisation; this network takes none (a flow network?)")
    flags = None if flipped is None else [bool(flag) for flag in flipped.tolist()]
    return _normalise(channels_first(video), normalisation, memory_format, flags)  # (B, 3, T, H, W)
