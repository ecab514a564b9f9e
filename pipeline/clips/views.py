"""Where a clip's crop sits in its frames, its left-right mirror, and the batch as the network takes it; the same
for distillation and finetuning.

Frames are (T, H, W, 3) uint8 here, already resized so the short side is the clip's short_side; the crop is taken
from them (random for training, central for evaluation). Given a part of the frame (a view box) and a fraction f,
`crop_box` keeps at least f of the crop's area inside that box (distill.augment says why stage two asks).

RGB clips leave the DataLoader workers as the decoder wrote them, (T, H, W, 3) uint8 (`rgb_clip_tensor`: the
crop is a view, not a copy), with a flag saying whether they are to be mirrored: the DataLoader's collate makes
the one host copy, into a (B, T, H, W, 3) batch, a quarter of the bytes of float32 through the workers' shared
memory and the host-to-device copy. On the device `video_to_device` mirrors the flagged clips, views the batch
as (B, 3, T, H, W) (physically channels_last_3d already, the layout the students run in on CUDA) and normalises
it (pipeline.clips.normalisation), to the values `rgb_to_tensor` gives on the host (the same float32 operations
in the same order; a mirror only moves bytes).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from distinit.pipeline.clips.normalisation import Normalisation, channels_first, normalise_clips

FLIP_PROBABILITY = 0.5
# Area fractions are compared with this slack, so a crop that fits its box exactly is inside despite float rounding.
INSIDE_TOLERANCE = 1e-6


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


def crop_frames(frames: np.ndarray, top: int, left: int, crop: int) -> np.ndarray:
    """(T, H, W, C) -> (T, crop, crop, C), a view."""
    return frames[:, top : top + crop, left : left + crop]


def flip_frames(frames: np.ndarray) -> np.ndarray:
    """Mirror (T, H, W, C) frames left-right."""
    return frames[:, :, ::-1]


def rgb_clip_tensor(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 frames (a crop view too) -> a tensor over the same memory: a clip as it leaves a loader
    worker. Collating makes the one copy, into a (B, T, H, W, 3) batch."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected (T, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    return torch.from_numpy(frames)


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
    return normalise_clips(channels_first(video), normalisation, memory_format, flags)  # (B, 3, T, H, W)
