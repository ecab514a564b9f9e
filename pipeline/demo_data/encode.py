"""ffmpeg command lines for the demo videos, with every setting fixed so the bytes are reproducible.

`bitexact` keeps encoder/muxer version strings and CPU-specific code paths out of the output,
`-map_metadata -1` drops the source's tags, and one encoder thread removes scheduling effects.
Each file is written to a temporary name and renamed, so a video either exists whole or not at all.
"""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import numpy as np

from distinit.pipeline.atomic import atomic_path
from distinit.pipeline.errors import VideoError
from distinit.pipeline.video.binary import ffmpeg_binary

_COMMON_INPUT = ["-hide_banner", "-nostdin", "-loglevel", "error", "-y"]
_BITEXACT = ["-fflags", "+bitexact", "-flags:v", "+bitexact", "-map_metadata", "-1", "-threads", "1"]
# Bit-exact, accurately rounded scaling and RGB->YUV conversion (also for the auto-inserted scaler).
_SCALER_FLAGS = "bicubic+accurate_rnd+full_chroma_int+bitexact"


@dataclasses.dataclass(frozen=True)
class H264Settings:
    """The pool's codec: H.264 in MP4, moov atom first (faststart) so readers can seek at once."""

    gop: int
    crf: int
    preset: str

    def arguments(self) -> list[str]:
        return [
            "-c:v", "libx264", "-preset", self.preset, "-crf", str(self.crf), "-pix_fmt", "yuv420p",
            "-g", str(self.gop), "-keyint_min", str(self.gop), "-sc_threshold", "0",
            "-movflags", "+faststart", "-f", "mp4",
        ]  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Mpeg4AviSettings:
    """The labeled set's codec: MPEG-4 part 2 with the XVID tag in AVI, like the HMDB-51 files."""

    qscale: int
    gop: int

    def arguments(self) -> list[str]:
        return [
            "-c:v", "mpeg4", "-vtag", "XVID", "-q:v", str(self.qscale), "-g", str(self.gop),
            "-pix_fmt", "yuv420p", "-f", "avi",
        ]  # fmt: skip


VideoSettings = H264Settings | Mpeg4AviSettings


def run_ffmpeg(arguments: list[str], target: Path, timeout_seconds: float, stdin_bytes: bytes | None = None) -> None:
    """Run ffmpeg writing to a temporary file beside `target`, then rename it onto `target`."""
    with atomic_path(target, suffix=target.suffix) as temporary:
        command = [ffmpeg_binary(), *_COMMON_INPUT, *arguments, str(temporary)]
        try:
            done = subprocess.run(command, input=stdin_bytes, capture_output=True, timeout=timeout_seconds)
        except subprocess.TimeoutExpired:
            reason = f"ffmpeg did not finish within {timeout_seconds:.0f} s; raise ffmpeg_timeout_seconds"
            raise VideoError(target, reason) from None
        if done.returncode != 0:
            message = done.stderr.decode("utf-8", "replace").strip().splitlines()
            reason = message[-1] if message else f"exit status {done.returncode}"
            raise VideoError(target, f"ffmpeg failed to write this demo video ({reason})")


def encode_frames(
    frames: np.ndarray, target: Path, fps: int, settings: VideoSettings, timeout_seconds: float
) -> None:
    """Encode (T, H, W, 3) uint8 RGB frames, piped to ffmpeg as raw video."""
    frame_count, height, width, _ = frames.shape
    arguments = [
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps), "-i", "pipe:0",
        "-sws_flags", _SCALER_FLAGS, "-frames:v", str(frame_count), *_BITEXACT, *settings.arguments(),
    ]  # fmt: skip
    run_ffmpeg(arguments, target, timeout_seconds, stdin_bytes=np.ascontiguousarray(frames).tobytes())


@dataclasses.dataclass(frozen=True)
class CutSpec:
    """Which part of a real clip becomes a pool clip."""

    start_seconds: float
    frame_count: int
    crop_width: int  # source pixels
    crop_height: int
    crop_left: int
    crop_top: int
    mirror: bool
    out_width: int
    out_height: int


def cut_clip(
    source: Path, cut: CutSpec, target: Path, fps: int, settings: VideoSettings, timeout_seconds: float
) -> None:
    """Cut, crop, mirror, resample to `fps` and scale a real clip, re-encoding it (no audio)."""
    filters = [f"fps={fps}", f"crop={cut.crop_width}:{cut.crop_height}:{cut.crop_left}:{cut.crop_top}"]
    if cut.mirror:
        filters.append("hflip")
    filters += [f"scale={cut.out_width}:{cut.out_height}:flags={_SCALER_FLAGS}", "setsar=1", "format=yuv420p"]
    arguments = [
        # -ss before -i seeks in the input; ffmpeg then decodes from the previous keyframe and drops
        # frames up to the start, so the cut is frame-accurate and the same on every run.
        "-ss", f"{cut.start_seconds:.3f}", "-i", str(source), "-an", "-sn", "-dn",
        "-vf", ",".join(filters), "-sws_flags", _SCALER_FLAGS, "-frames:v", str(cut.frame_count),
        *_BITEXACT, *settings.arguments(),
    ]  # fmt: skip
    run_ffmpeg(arguments, target, timeout_seconds)
