"""Decoding one video's teacher frames, run in worker processes.

Kept free of torch imports so spawned workers start fast. A failure is returned, not raised, so one
bad video never stops the run; the runner lists it in the manifest with its reason.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time

import numpy as np

from distinit.extract.sampling import SamplingConfig, sample_frames
from distinit.pipeline.errors import DistinitError
from distinit.pipeline.hashing import sha256_file
from distinit.pipeline.preemption import PREEMPTION_SIGNALS
from distinit.pipeline.video.decode import read_frames
from distinit.pipeline.video.layout_record import layout_record
from distinit.pipeline.video.probe import probe_layout


# Frames are decoded with their short side at the teacher's size, so the long side grows with the aspect
# ratio: an 8000x16 strip would come out 128000 px wide at short side 256 (196 MB a frame, GBs a video).
# Real footage stays under ~4:1 (cinema 2.76:1, 32:9 displays 3.6:1, 360-degree video 2:1).
MAX_ASPECT_RATIO = 8.0
PARENT_CHECK_SECONDS = 0.5


def aspect_problem(width: int, height: int, short_side: int) -> str | None:
    """Why frames of this size cannot be decoded for the teachers, or None when they can."""
    aspect = max(width, height) / max(1, min(width, height))
    if aspect <= MAX_ASPECT_RATIO:
        return None
    long_side = round(max(width, height) * short_side / max(1, min(width, height)))
    return (
        f"aspect ratio {aspect:.0f}:1 ({width}x{height}) is beyond {MAX_ASPECT_RATIO:.0f}:1; at short side "
        f"{short_side} every frame would be {long_side} px long"
    )


@dataclasses.dataclass
class DecodedVideo:
    video_id: str
    path: str
    frames: np.ndarray | None = None  # (N, H, W, 3) uint8
    t_seconds: np.ndarray | None = None  # (N,) float64
    frame_index: np.ndarray | None = None  # (N,) int64
    layout: dict | None = None  # pipeline.video.layout_record's record of the probed file, stored with the rows
    error: str | None = None


def decode_video(
    video_id: str, path: str, sampling: SamplingConfig, short_side: int, timeout: float, threads: int | None = 1
) -> DecodedVideo:
    try:
        # Refuses a file holding clearly less than its header declares (cut short), like any unreadable one.
        layout = probe_layout(path, timeout=timeout)
        info = layout.info
        too_long = aspect_problem(info.width, info.height, short_side)
        if too_long is not None:
            return DecodedVideo(video_id, path, error=too_long)
        sampled = sample_frames(info.duration, info.fps, info.frame_count, sampling)
        if not sampled:
            return DecodedVideo(video_id, path, error="no frames to sample (empty or zero-length video)")
        times = [frame.t_seconds for frame in sampled]
        frames = read_frames(path, times, short_side=short_side, timeout=timeout, threads=threads)
        # The file's content hash, so eval can find a renamed or copied test video among the pretraining videos
        # (evaluate/overlap.py). Streamed in 1 MiB chunks here, in the worker, right after the probe read the file.
        record = layout_record(layout, sha256=sha256_file(path))
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
        layout=record,
    )


def start_worker(parent_pid: int) -> None:
    """Worker initializer: ignore the scheduler's preemption signals (the main process handles them and closes the
    pool; extract.pool starts workers with them blocked until now) and end with the parent."""
    for number in PREEMPTION_SIGNALS:
        signal.signal(number, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, PREEMPTION_SIGNALS)
    exit_with_parent(parent_pid)


def exit_with_parent(parent_pid: int) -> None:
    """End this worker once the process that started it is gone (from start_worker).

    A SIGKILLed runner cannot shut its pool down, and a worker blocked handing back decoded frames
    never notices: it holds both ends of the result pipe (multiprocessing passes the queue whole), so the
    write blocks forever instead of failing, with the frames in memory (found by the kill trials)."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_CHECK_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
