"""Which frames of a video the teachers look at.

Frames are taken at a fixed rate of *video time* (default 2 per second), at the centre of each
interval — t = (k + 0.5) / rate — so the first teacher frame is not the (often black) frame 0 and a
clip's frames are spread evenly. Long videos are capped at `max_frames_per_video` frames chosen evenly
over the whole video. Everything is a pure function of the video's duration and fps: deterministic.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from distinit.pipeline.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    frames_per_second: float = 2.0
    max_frames_per_video: int = 64

    def __post_init__(self):
        if not self.frames_per_second > 0:
            raise ConfigError(f"frames_per_second must be > 0, got {self.frames_per_second}")
        if self.max_frames_per_video < 1:
            raise ConfigError(f"max_frames_per_video must be >= 1, got {self.max_frames_per_video}")


@dataclasses.dataclass(frozen=True)
class SampledFrame:
    t_seconds: float
    frame_index: int


def sample_frames(duration: float, fps: float, frame_count: int, config: SamplingConfig) -> list[SampledFrame]:
    """Teacher frames of a video of `duration` seconds, `fps` frames/s and `frame_count` frames.

    Returns frames in time order with distinct frame indices (a video slower than the sampling rate
    gives each frame once). A video with no frames gives an empty list.
    """
    if frame_count <= 0 or duration <= 0 or fps <= 0:
        return []
    count = max(1, math.floor(duration * config.frames_per_second))
    times = (np.arange(count) + 0.5) / config.frames_per_second
    if count > config.max_frames_per_video:
        # Evenly spaced over the whole video, so a long uncurated video is still covered end to end.
        picks = np.linspace(0, count - 1, config.max_frames_per_video).round().astype(int)
        times = times[np.unique(picks)]
    frames: list[SampledFrame] = []
    seen: set[int] = set()
    for t in times:
        index = min(math.floor(t * fps + 1e-6), frame_count - 1)
        if index not in seen:
            seen.add(index)
            frames.append(SampledFrame(t_seconds=float(t), frame_index=index))
    return frames
