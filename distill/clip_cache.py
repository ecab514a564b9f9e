"""`--cache-clips DIR`: every video decoded once, so later epochs slice clips out of memory-mapped files.

Design. A clip starts on a multiple of its stride (distill.windows), so the cache keeps, per video,
every stride-th frame of the whole video at the clip's short side: DIR/<video id>-<key>/frames.npy
((N, H, W, 3) uint8, N = ceil(frame_count / stride)) and info.json (fps, frame_count, ...). A clip is
then rows start / stride, start / stride + 1, ... of the memory map (padded with the last frame past
the end, as the decoder pads), so a cached sample is bit-identical to a decoded one and costs a page-
cache read instead of an ffmpeg process. For the flow student the entry holds flow instead: row j is
the flow (float16, see distill.flow) from stride-frame j to j + 1 (the last row: from the last frame
to itself, as a padded clip has it), computed on the full resized frames, so flow is computed once per
video rather than once per sample — what makes TV-L1 (~0.3 s per 112 x 112 pair on one core) usable.
The key hashes the video id, short side, stride, content (rgb or flow method) and the video file's size
and mtime: a changed video or other settings make a new entry (delete DIR to reclaim stale ones).

Cost. Disk: N * H * W * 3 bytes per video for RGB, 4 for flow, uncompressed so that it can be sliced
without decoding: 10 s of 30 fps video at stride 2 and 128 x 170 is 150 frames, 9.8 MB of RGB;
Kinetics-400's 240k clips would need ~2.4 TB, so use it for pools that fit your disk. The first epoch
decodes (and for flow, computes flow over) whole videos, more than one clip needs; later epochs read
only. Memory: building decodes DECODE_CHUNK_FRAMES frames at a time into the memory map, so it is
bounded whatever the video's length; reading maps only the pages of the clip.

Concurrency. An entry is built in a hidden temporary folder and renamed into place, so a reader never
sees half an entry. A lock file marks a build in progress: another worker that wants the same video
meanwhile decodes its clip directly instead of waiting. A lock older than STALE_LOCK_SECONDS is taken
to be a dead worker's and removed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distinit.distill import flow
from distinit.pipeline.errors import VideoError
from distinit.pipeline.hashing import sha256_json
from distinit.pipeline.video import output_size, probe, read_clip

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
FRAMES_FILE = "frames.npy"
INFO_FILE = "info.json"
DECODE_CHUNK_FRAMES = 128
STALE_LOCK_SECONDS = 600.0
_UNSAFE_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class CachedVideo:
    """One finished cache entry: every `grid`-th frame of a video (or the flow from it), memory-mapped on read."""

    folder: Path
    fps: float
    frame_count: int
    grid: int

    def read_clip(self, first_frame: int, num_frames: int, stride: int) -> np.ndarray:
        """Rows for frames first_frame, first_frame + stride, ... as (num_frames, H, W, C), like pipeline.video.read_clip:
        uint8 RGB, or float16 flow from each of those frames to the next."""
        if first_frame % self.grid or stride % self.grid:
            raise ValueError(f"cached frames are every {self.grid}th; frame {first_frame} with stride {stride} is not on that grid")
        frames = np.load(self.folder / FRAMES_FILE, mmap_mode="r")  # (N, H, W, C)
        step = stride // self.grid
        rows = np.arange(first_frame // self.grid, first_frame // self.grid + num_frames * step, step)
        rows = np.minimum(rows, len(frames) - 1)  # past the end: repeat the last frame, as the decoder does
        return np.ascontiguousarray(frames[rows])


class ClipCache:
    """A folder of cached videos at one short side and frame grid: RGB frames, or with `flow_method` the
    flow between consecutive grid frames. Holds only paths and numbers: picklable."""

    def __init__(self, folder: str | os.PathLike, *, short_side: int, grid: int, flow_method: str | None = None,
                 decode_threads: int | None = 1, timeout: float = 600.0):
        self.folder = Path(folder)
        self.short_side, self.grid, self.flow_method = int(short_side), int(grid), flow_method
        self.decode_threads, self.timeout = decode_threads, timeout

    def entry_folder(self, video_id: str, path: str | os.PathLike) -> Path:
        try:
            status = os.stat(path)
        except OSError as error:
            raise VideoError(path, f"cannot read the video ({error.strerror})") from None
        key = sha256_json({
            "version": CACHE_FORMAT_VERSION, "video_id": video_id, "short_side": self.short_side, "grid": self.grid,
            "content": self.flow_method or "rgb", "size": status.st_size, "mtime_ns": status.st_mtime_ns,
        })[:16]
        readable = _UNSAFE_CHARACTERS.sub("_", video_id)[-80:].lstrip(".") or "video"
        return self.folder / f"{readable}-{key}"

    def get(self, video_id: str, path: str | os.PathLike) -> CachedVideo | None:
        """The video's entry, building it first if needed; None while another process builds it."""
        folder = self.entry_folder(video_id, path)
        cached = _load_entry(folder, self.grid)
        if cached is not None:
            return cached
        lock = folder.parent / f".{folder.name}.lock"
        if not _acquire(lock):
            return None
        try:
            cached = _load_entry(folder, self.grid)  # finished by another process between our check and the lock
            return cached if cached is not None else self._build(video_id, Path(path), folder)
        finally:
            lock.unlink(missing_ok=True)

    def _build(self, video_id: str, path: Path, folder: Path) -> CachedVideo:
        info = probe(path, timeout=self.timeout)
        count = math.ceil(info.frame_count / self.grid)
        width, height = output_size(info.width, info.height, self.short_side)
        channels, dtype = (3, np.uint8) if self.flow_method is None else (2, flow.FLOW_STORAGE_DTYPE)
        temporary = folder.parent / f".{folder.name}.{os.getpid()}.tmp"
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir(parents=True)
        try:
            rows = np.lib.format.open_memmap(temporary / FRAMES_FILE, mode="w+", dtype=dtype, shape=(count, height, width, channels))
            for first in range(0, count, DECODE_CHUNK_FRAMES):
                chunk = min(DECODE_CHUNK_FRAMES, count - first)
                rows[first : first + chunk] = self._decode_rows(path, info.fps, first, chunk)
            rows.flush()
            del rows
            entry = {"video_id": video_id, "source": str(path), "fps": info.fps, "frame_count": info.frame_count,
                     "grid": self.grid, "short_side": self.short_side, "content": self.flow_method or "rgb",
                     "shape": [count, height, width, channels]}
            (temporary / INFO_FILE).write_text(json.dumps(entry, indent=2) + "\n", encoding="utf-8")
            try:
                os.rename(temporary, folder)
            except OSError:  # another process renamed an identical entry into place first
                if not folder.is_dir():
                    raise
        finally:
            shutil.rmtree(temporary, ignore_errors=True)
        logger.debug("cached %s: %d rows of %dx%d in %s", video_id, count, width, height, folder)
        return CachedVideo(folder, float(info.fps), int(info.frame_count), self.grid)

    def _decode_rows(self, path: Path, fps: float, first: int, count: int) -> np.ndarray:
        """Rows first .. first + count - 1: grid frames, or the flow from each to the next (one frame more
        decoded; past the end the decoder repeats the last frame, so the last row is its flow to itself)."""
        wanted = count if self.flow_method is None else count + 1
        frames = read_clip(
            path, first * self.grid / fps, wanted, stride=self.grid, short_side=self.short_side,
            timeout=self.timeout, threads=self.decode_threads,
        )
        return frames if self.flow_method is None else flow.clip_flow(frames, self.flow_method)


def _load_entry(folder: Path, grid: int) -> CachedVideo | None:
    try:
        info = json.loads((folder / INFO_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return CachedVideo(folder, float(info["fps"]), int(info["frame_count"]), grid)


def _acquire(lock: Path) -> bool:
    """Create `lock` exclusively; a lock left by a dead process (older than STALE_LOCK_SECONDS) is replaced."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                age = time.time() - lock.stat().st_mtime
            except FileNotFoundError:
                continue  # released meanwhile: try again
            if age < STALE_LOCK_SECONDS:
                return False
            logger.warning("%s: removing a clip-cache lock %.0f s old (a worker died while caching)", lock, age)
            lock.unlink(missing_ok=True)
            continue
        os.write(descriptor, str(os.getpid()).encode())
        os.close(descriptor)
        return True
    return False
