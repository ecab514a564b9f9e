"""Re-encode one video for stage two: small, short GOPs, the same frames, the same bytes every time.

One ffmpeg command (`encode_command`) writes H.264 (libx264, yuv420p) in MP4 with the moov atom first:
  - the short side becomes `short_side` (`prepared_size`: as `read_clip` would size it, never upscaled, even);
  - every frame of the first video stream, at its own timestamp (`-fps_mode passthrough` drops and duplicates
    nothing, `-enc_time_base demux` keeps the source's time base, so frame times match the source's probe);
  - a keyframe every `gop` frames and nowhere else (`-keyint_min`, no scene-cut keyframes; x264's GOPs are
    closed), so a clip needs at most gop - 1 frames decoded before its first;
  - x264's `preset`, its `tune` when one is set (`fastdecode`: CAVLC, no deblocking, no weighted prediction),
    and `crf`;
  - no audio, subtitles, data streams, chapters or metadata;
  - deterministic: one x264 thread (its output depends on the thread count), bit-exact decoding (MPEG-4 and
    MPEG-2 decoders otherwise pick a CPU-dependent IDCT), scaling and muxing (no encoder version or creation
    time in the container), and a fixed modification time (`FIXED_MTIME`), so a re-run, a run killed and
    resumed, or parts run on other machines with the same ffmpeg build write the same bytes and layout records.
The copy is then probed (`probe_layout`) and must hold as many frames as the source at the same frame rate;
anything else is a VideoError naming the source, and the caller skips the video.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

from distinit.pipeline.atomic import atomic_path
from distinit.pipeline.errors import VideoError
from distinit.pipeline.hashing import sha256_file
from distinit.pipeline.video.binary import ffmpeg_binary
from distinit.pipeline.video.decode import output_size
from distinit.pipeline.video.layout_record import layout_record
from distinit.pipeline.video.probe import FrameLayout, probe_layout
from distinit.pipeline.video.process import GLOBAL_ARGUMENTS, run_ffmpeg

# 2000-01-01T00:00:00Z. Every copy gets it, so a copy's metadata is a function of its bytes too (layout records
# hold only the size; the fixed time keeps tree hashes and rsync comparisons stable across interrupted runs).
FIXED_MTIME = 946684800
# Area averaging is the right filter to shrink by; accurate rounding and bitexact keep the pixels the same on
# every CPU (no SIMD-dependent rounding).
SCALER_FLAGS = "area+accurate_rnd+bitexact"
# A prepared copy's average frame rate may differ from the source's by its time base's rounding, no more.
FPS_TOLERANCE = 1e-3


@dataclasses.dataclass(frozen=True)
class Encoding:
    """What an encode is asked for: the encoding options of PrepareConfig, passed explicitly."""

    short_side: int
    gop: int
    crf: int
    preset: str
    timeout_seconds: float
    tune: str | None = None  # x264's -tune, e.g. "fastdecode"; None: x264's default tuning


@dataclasses.dataclass(frozen=True)
class PreparedFile:
    """A finished copy: its layout record (with the fixed mtime), sha256 and size, and the source's layout."""

    layout: dict[str, Any]
    sha256: str
    bytes: int
    source_layout: FrameLayout


def prepared_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) of the copy: `output_size` (what read_clip makes of it at this short side, so a clip read
    from the copy has the original's size) when that shrinks it; else the source's size rounded down to even."""
    if min(width, height) > short_side:
        return output_size(width, height, short_side)
    if min(width, height) < 2:
        raise ValueError(f"a {width}x{height} video is too small to encode in 4:2:0")
    return width - width % 2, height - height % 2


def encode_command(
    source: str, target: str, size: tuple[int, int], encoding: Encoding, source_size: tuple[int, int]
) -> list[str]:
    """The ffmpeg command that writes `target` (MP4, whatever its name) from `source`."""
    filters = [f"scale={size[0]}:{size[1]}:flags={SCALER_FLAGS}"] if size != source_size else []
    filters.append("format=yuv420p")
    gop = str(encoding.gop)
    return [
        ffmpeg_binary(), *GLOBAL_ARGUMENTS, "-loglevel", "error", "-y",
        "-threads", "1", "-flags:v", "+bitexact", "-i", source,
        "-map", "0:V:0", "-an", "-sn", "-dn", "-map_metadata", "-1", "-map_chapters", "-1",
        "-vf", ",".join(filters), "-filter_threads", "1", "-fps_mode", "passthrough", "-enc_time_base", "demux",
        "-c:v", "libx264", "-preset", encoding.preset, *(["-tune", encoding.tune] if encoding.tune else []),
        "-crf", str(encoding.crf), "-pix_fmt", "yuv420p",
        "-g", gop, "-keyint_min", gop, "-sc_threshold", "0", "-threads", "1",
        "-fflags", "+bitexact", "-flags:v", "+bitexact", "-movflags", "+faststart", "-f", "mp4", target,
    ]  # fmt: skip


def encode_video(source: str | os.PathLike, target: str | os.PathLike, encoding: Encoding) -> PreparedFile:
    """Write the prepared copy of `source` to `target` atomically (a temp file beside it, then a rename).

    A source that does not probe, an ffmpeg failure or timeout, or a copy whose frame count or rate differs from
    the source's raises VideoError naming the source; nothing is left at `target` then. A full disk or an
    unwritable folder raises OutputError."""
    source = os.fspath(source)
    source_layout = probe_layout(source, encoding.timeout_seconds)
    info = source_layout.info
    try:
        size = prepared_size(info.width, info.height, encoding.short_side)
    except ValueError as error:
        raise VideoError(source, str(error)) from None
    with atomic_path(target, suffix=".mp4") as temporary:
        command = encode_command(source, os.fspath(temporary), size, encoding, (info.width, info.height))
        run_ffmpeg(command, source, encoding.timeout_seconds)
        os.utime(temporary, (FIXED_MTIME, FIXED_MTIME))
        layout = probe_layout(temporary, encoding.timeout_seconds)
        check_same_frames(source, source_layout, layout)
        # Recorded before the rename, which keeps the size and the mtime the record holds.
        prepared = PreparedFile(layout_record(layout), sha256_file(temporary), os.path.getsize(temporary), source_layout)
    return prepared


def check_same_frames(source: str, source_layout: FrameLayout, layout: FrameLayout) -> None:
    """The copy must hold the source's frames: as many, at the same rate (a decoder that drops the frames before
    a stream's first keyframe, or a damaged stream, gives fewer; reading by frame index would then be off)."""
    expected, got = source_layout.info, layout.info
    if got.frame_count != expected.frame_count:
        raise VideoError(source, (
            f"its prepared copy has {got.frame_count} frames, the source {expected.frame_count} "
            "(frames that do not decode); re-encode or remove this video"
        ))
    if not math.isclose(got.fps, expected.fps, rel_tol=FPS_TOLERANCE):
        raise VideoError(source, (
            f"its prepared copy runs at {got.fps:.4f} fps, the source at {expected.fps:.4f}; re-encode or remove this video"
        ))


def restore_fixed_mtime(path: str | os.PathLike) -> None:
    """Give a verified copy back its fixed modification time if it was touched since (its bytes are unchanged)."""
    if os.stat(path).st_mtime_ns != FIXED_MTIME * 1_000_000_000:
        os.utime(path, (FIXED_MTIME, FIXED_MTIME))
