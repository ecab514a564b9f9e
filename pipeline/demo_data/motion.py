"""Synthetic camera motion over a still photo: smooth trajectories, fitted inside the photo, rendered.

Geometry. Output pixel (row i, column j) has offset o = (j - (w-1)/2, i - (h-1)/2) from the frame
centre; at frame t it shows the photo point

    p = c + s * d(t) + s * exp(z(t)) * R(a(t)) * o

with c the camera centre and s the scale (photo pixels per output pixel), both chosen by `place_camera`
so the whole trajectory stays inside the photo; d(t) the pan offset in output pixels; z(t) the log zoom
(negative = closer); a(t) the camera roll. Image y points down, so a growing a(t) rolls the camera
clockwise and the scene turns counter-clockwise on screen.

Class conventions (all name the CAMERA's motion): pan_right moves the view right, so the scene slides
left on screen; zoom_in makes the scene grow; rotate_cw rolls the camera clockwise.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import skimage.transform

POOL_MOTION_KINDS = ("pan", "zoom", "rotate", "pan-zoom", "pan-rotate", "zoom-rotate", "pan-zoom-rotate")


@dataclasses.dataclass(frozen=True)
class CameraPath:
    """Per-frame camera motion relative to the first view; every array has shape (T,)."""

    offset_x: np.ndarray  # output pixels at the base scale
    offset_y: np.ndarray
    log_zoom: np.ndarray  # log of the scale relative to the base scale
    angle: np.ndarray  # radians, positive = camera rolled clockwise

    @property
    def frame_count(self) -> int:
        return len(self.offset_x)


@dataclasses.dataclass(frozen=True)
class CameraPlacement:
    center_x: float  # photo pixels
    center_y: float
    scale: float  # photo pixels per output pixel at log_zoom 0


@dataclasses.dataclass(frozen=True)
class MotionSpeeds:
    pan: tuple[float, float]  # frame widths per second
    zoom: tuple[float, float]  # log scale change per second
    rotation: tuple[float, float]  # degrees per second


def speed_profile(frame_count: int, rng: np.random.Generator) -> np.ndarray:
    """Monotone progress from 0 to 1 whose speed swells and eases (never stops), shape (T,)."""
    progress = np.linspace(0.0, 1.0, frame_count)
    # The derivative is 1 + wave * cos(...), positive for |wave| < 1, so the motion never reverses.
    wave = rng.uniform(-0.35, 0.35)
    return progress + wave * np.sin(2 * math.pi * progress) / (2 * math.pi)


def action_path(
    class_name: str, frame_count: int, seconds: float, width: int, height: int, speeds: MotionSpeeds,
    rng: np.random.Generator,
) -> CameraPath:  # fmt: skip
    """The camera path of one labeled video: one motion, in the class's direction, at a random speed."""
    zeros = np.zeros(frame_count)
    progress = speed_profile(frame_count, rng)
    tilt = math.radians(rng.uniform(-3.0, 3.0))
    if class_name in ("pan_left", "pan_right"):
        direction = 1.0 if class_name == "pan_right" else -1.0
        travel = rng.uniform(*speeds.pan) * width * seconds
        drift = rng.uniform(-0.05, 0.05) * height * seconds  # a hand-held camera does not pan level
        return CameraPath(direction * travel * progress, drift * progress, zeros, zeros + tilt)
    if class_name in ("zoom_in", "zoom_out"):
        direction = -1.0 if class_name == "zoom_in" else 1.0
        change = rng.uniform(*speeds.zoom) * seconds
        return CameraPath(zeros, zeros, direction * change * progress, zeros + tilt)
    if class_name in ("rotate_cw", "rotate_ccw"):
        direction = 1.0 if class_name == "rotate_cw" else -1.0
        turn = math.radians(rng.uniform(*speeds.rotation)) * seconds
        start = math.radians(rng.uniform(-15.0, 15.0))
        return CameraPath(zeros, zeros, zeros, start + direction * turn * progress)
    raise ValueError(f"unknown action class {class_name!r}")


def pool_path(
    kind: str, frame_count: int, seconds: float, width: int, height: int, speeds: MotionSpeeds,
    rng: np.random.Generator,
) -> CameraPath:  # fmt: skip
    """A random smooth path mixing the motions in `kind` (e.g. "pan-zoom"), plus a slow wobble."""
    parts = set(kind.split("-"))
    progress = np.linspace(0.0, 1.0, frame_count)
    offset_x = _wobble(progress, 0.02 * width, rng)
    offset_y = _wobble(progress, 0.02 * height, rng)
    log_zoom = np.zeros(frame_count)
    angle = np.full(frame_count, math.radians(rng.uniform(-5.0, 5.0)))
    if "pan" in parts:
        heading = rng.uniform(0.0, 2 * math.pi)
        travel = rng.uniform(*speeds.pan) * width * seconds * speed_profile(frame_count, rng)
        offset_x += math.cos(heading) * travel
        offset_y += math.sin(heading) * travel
    if "zoom" in parts:
        change = rng.choice([-1.0, 1.0]) * rng.uniform(*speeds.zoom) * seconds
        log_zoom += change * speed_profile(frame_count, rng) + _wobble(progress, 0.05, rng)
    if "rotate" in parts:
        turn = rng.choice([-1.0, 1.0]) * math.radians(rng.uniform(*speeds.rotation)) * seconds
        angle += turn * speed_profile(frame_count, rng)
    return CameraPath(offset_x, offset_y, log_zoom, angle)


def _wobble(progress: np.ndarray, amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """A slow sinusoid (0.5-1.5 cycles per clip) that starts at zero."""
    cycles = rng.uniform(0.5, 1.5)
    phase = rng.uniform(0.0, 2 * math.pi)
    return amplitude * (np.sin(2 * math.pi * cycles * progress + phase) - math.sin(phase))


def _view_extents(path: CameraPath, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Half width and half height of each frame's (rotated, zoomed) view box, in base output pixels."""
    zoom = np.exp(path.log_zoom)
    cosine, sine = np.abs(np.cos(path.angle)), np.abs(np.sin(path.angle))
    half_width, half_height = (width - 1) / 2, (height - 1) / 2
    return zoom * (cosine * half_width + sine * half_height), zoom * (sine * half_width + cosine * half_height)


def place_camera(
    path: CameraPath, photo_width: int, photo_height: int, width: int, height: int, coverage: float,
    rng: np.random.Generator,
) -> CameraPlacement:  # fmt: skip
    """The largest scale at which the whole path fits in the photo, times `coverage` (<= 1), at a random
    position among those where it still fits."""
    extent_x, extent_y = _view_extents(path, width, height)
    low_x, high_x = np.min(path.offset_x - extent_x), np.max(path.offset_x + extent_x)
    low_y, high_y = np.min(path.offset_y - extent_y), np.max(path.offset_y + extent_y)
    scale = coverage * min((photo_width - 1) / (high_x - low_x), (photo_height - 1) / (high_y - low_y))
    # The slack is >= 0 by construction; max() only guards against rounding at coverage 1.
    slack_x = max(0.0, photo_width - 1 - scale * (high_x - low_x))
    slack_y = max(0.0, photo_height - 1 - scale * (high_y - low_y))
    center_x = -scale * low_x + rng.uniform(0.0, slack_x)
    center_y = -scale * low_y + rng.uniform(0.0, slack_y)
    return CameraPlacement(float(center_x), float(center_y), float(scale))


def augment_photo(photo: np.ndarray, min_crop_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A random crop, maybe mirrored, with colour jitter: (H', W', 3) float32 in [0, 255]."""
    photo_height, photo_width = photo.shape[:2]
    crop_width = max(8, round(photo_width * rng.uniform(min_crop_fraction, 1.0)))
    crop_height = max(8, round(photo_height * rng.uniform(min_crop_fraction, 1.0)))
    left = int(rng.integers(0, photo_width - crop_width + 1))
    top = int(rng.integers(0, photo_height - crop_height + 1))
    crop = photo[top : top + crop_height, left : left + crop_width].astype(np.float32)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    saturation, contrast, brightness = rng.uniform(0.7, 1.3), rng.uniform(0.8, 1.2), rng.uniform(0.85, 1.15)
    channel_gains = rng.uniform(0.94, 1.06, size=3).astype(np.float32)
    grey = crop.mean(axis=2, keepdims=True)
    crop = grey + (crop - grey) * saturation
    mean = crop.mean()
    crop = ((crop - mean) * contrast + mean) * brightness * channel_gains
    return np.ascontiguousarray(np.clip(crop, 0.0, 255.0), dtype=np.float32)


def render(
    photo: np.ndarray, path: CameraPath, placement: CameraPlacement, width: int, height: int, noise_std: float,
    rng: np.random.Generator,
) -> np.ndarray:  # fmt: skip
    """Frames (T, height, width, 3) uint8 of the camera following `path` over `photo` (float, H x W x 3)."""
    photo, scale_x, scale_y = _shrink_for_widest_view(photo, placement.scale * float(np.exp(path.log_zoom.max())))
    offset_x = np.arange(width, dtype=np.float64)[None, :] - (width - 1) / 2  # (1, w)
    offset_y = np.arange(height, dtype=np.float64)[:, None] - (height - 1) / 2  # (h, 1)
    frames = np.empty((path.frame_count, height, width, 3), dtype=np.uint8)
    for index in range(path.frame_count):
        step = placement.scale * math.exp(path.log_zoom[index])
        cosine, sine = math.cos(path.angle[index]), math.sin(path.angle[index])
        center_x = placement.center_x + placement.scale * path.offset_x[index]
        center_y = placement.center_y + placement.scale * path.offset_y[index]
        x = center_x + step * (cosine * offset_x - sine * offset_y)  # (h, w), photo pixels
        y = center_y + step * (sine * offset_x + cosine * offset_y)
        # Map original-photo coordinates onto the shrunk photo (pixel centres stay aligned).
        frame = sample_bilinear(photo, (x + 0.5) * scale_x - 0.5, (y + 0.5) * scale_y - 0.5)
        if noise_std > 0:
            frame += rng.standard_normal(frame.shape, dtype=np.float32) * np.float32(noise_std)
        frames[index] = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
    return frames


def _shrink_for_widest_view(photo: np.ndarray, widest_scale: float) -> tuple[np.ndarray, float, float]:
    """Low-pass and shrink the photo so the widest view samples about one photo pixel per output
    pixel; bilinear sampling of a larger photo would alias."""
    if widest_scale <= 1.0:
        return photo, 1.0, 1.0
    photo_height, photo_width = photo.shape[:2]
    new_height = max(2, round(photo_height / widest_scale))
    new_width = max(2, round(photo_width / widest_scale))
    shrunk = skimage.transform.resize(
        photo, (new_height, new_width), order=1, anti_aliasing=True, preserve_range=True
    ).astype(np.float32)
    return shrunk, new_width / photo_width, new_height / photo_height


def sample_bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear samples of `image` (H, W, C) at float pixel coordinates x, y (h, w); edges clamp."""
    image_height, image_width, channels = image.shape
    x = np.clip(x, 0.0, image_width - 1)
    y = np.clip(y, 0.0, image_height - 1)
    # Truncation is floor here because the coordinates are already >= 0.
    left = np.minimum(x.astype(np.intp), image_width - 2)
    top = np.minimum(y.astype(np.intp), image_height - 2)
    weight_x = (x - left).astype(np.float32)[..., None]
    weight_y = (y - top).astype(np.float32)[..., None]
    # Gathering rows of the flattened image is several times faster than 2-D fancy indexing.
    pixels = image.reshape(-1, channels)
    index = top * image_width + left
    top_left, top_right = np.take(pixels, index, axis=0), np.take(pixels, index + 1, axis=0)
    bottom_left = np.take(pixels, index + image_width, axis=0)
    bottom_right = np.take(pixels, index + image_width + 1, axis=0)
    upper = top_left + (top_right - top_left) * weight_x
    lower = bottom_left + (bottom_right - bottom_left) * weight_x
    return upper + (lower - upper) * weight_y
