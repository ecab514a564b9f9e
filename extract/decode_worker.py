"""Decoding one video's teacher frames, run in worker processes.

Kept free of torch imports so spawned workers start fast. A failure is returned, not raised, so one
bad video never stops the run; the runner lists it in the manifest with its reason.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from extract.sampling import SamplingConfig, sample_frames
from pipeline.errors import DistinitError
from pipeline.video import probe
from pipeline.video.decode import read_frames


@dataclasses.dataclass
class DecodedVideo:
    video_id: str
    path: str
    frames: np.ndarray | None = None  # (N, H, W, 3) uint8
    t_seconds: np.ndarray | None = None  # (N,) float64
    frame_index: np.ndarray | None = None  # (N,) int64
    error: str | None = None


def decode_video(
    video_id: str, path: str, sampling: SamplingConfig, short_side: int, timeout: float, threads: int | None = 1
) -> DecodedVideo:
    try:
        info = probe(path, timeout=timeout)
        sampled = sample_frames(info.duration, info.fps, info.frame_count, sampling)
        if not sampled:
            return DecodedVideo(video_id, path, error="no frames to sample (empty or zero-length video)")
        times = [frame.t_seconds for frame in sampled]
        frames = read_frames(path, times, short_side=short_side, timeout=timeout, threads=threads)
    except DistinitError as error:
        reason = error.reason if hasattr(error, "reason") else str(error)
        return DecodedVideo(video_id, path, error=reason)
    except (OSError, ValueError, RuntimeError) as error:  # anything else about this file, never the whole run
        return DecodedVideo(video_id, path, error=f"{type(error).__name__}: {error}")
    return DecodedVideo(
        video_id,
        path,
        frames=frames,
        t_seconds=np.asarray(times, dtype=np.float64),
        frame_index=np.asarray([frame.frame_index for frame in sampled], dtype=np.int64),
    )
