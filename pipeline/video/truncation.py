"""Whether a video file holds clearly less than its container declares: a cut-off download or copy.

ffmpeg reads a cut-off file without an error: it lists the packets that are there and stops. Today's
probe would then describe the first 20 KB of an 8 MB AVI as a one-frame video. So the probe compares
what the header declares with what its packets hold, where a header declares something:

- AVI (HMDB-51, UCF-101): the video stream header (`strh`) declares its length in frames, and the
  RIFF chunk its size in bytes. ffmpeg itself notices the RIFF chunk running past the end of the file,
  but only scales its reported duration down by the missing bytes (at log level debug), so the header
  is read here. Truncated: the RIFF chunks run past the end of the file AND the packets hold less than
  TRUNCATED_SHARE of the declared frames. Both are needed, so a header a writer got wrong (a stale
  frame count) never rejects a complete file.
- Matroska/WebM: the segment header declares the duration (ffmpeg's `Duration:` line); a cut file also
  makes ffmpeg log "File ended prematurely". Truncated: that line AND video packets covering less than
  TRUNCATED_SHARE of the declared duration (the duration covers audio too, which can outlast the video
  a little, never by a tenth in a complete file of any length worth training on).
- MP4/MOV: a cut file either lost its index (ffmpeg fails: "moov atom not found") or has it first and
  logs "partial file"; the probe rejects both already.
- MPEG-TS/PS and others declare nothing (their duration is estimated from the packets that are there), so
  a cut file of theirs is read as the shorter video it is.

TRUNCATED_SHARE = 0.9: a complete file holds 100% of what it declares (every file under data/demo and
every test fixture: ratio 1.0), a file cut anywhere before its last tenth is rejected, and a file missing
only its last few frames is kept as the slightly shorter video it is.
"""

from __future__ import annotations

import dataclasses
import re
import struct

TRUNCATED_SHARE = 0.9
AVI_FORMAT = "avi"
MATROSKA_FORMAT = "matroska,webm"
_DURATION = re.compile(r"^\s*Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)", re.MULTILINE)
_ENDED_EARLY = "File ended prematurely"
# A header list is a few kB (stream headers, their index pointers, padding); stop reading well past that.
_MAX_HEADER_BYTES = 1 << 20
# OpenDML AVIs chain one RIFF chunk per ~1 GB; this bounds the walk on a damaged size field.
_MAX_RIFF_CHUNKS = 100_000


@dataclasses.dataclass(frozen=True)
class Declared:
    """What a container header says the video stream holds; frames is None where it declares only a duration."""

    seconds: float
    frames: int | None
    cut: bool  # whether the file itself shows it ends early (RIFF chunk past the end, "File ended prematurely")


def truncation_problem(path: str, container: str | None, frame_count: int, fps: float, stderr_text: str) -> str | None:
    """`truncated: declares ..., holds ...` when `path` clearly holds less than its header declares, else None.

    `container` is ffmpeg's input format name, `frame_count`/`fps` what the probe counted in the packets,
    `stderr_text` the probe's ffmpeg log (level info)."""
    declared = declared_content(path, container, stderr_text)
    if declared is None or not declared.cut:
        return None
    held_seconds = frame_count / fps if fps > 0 else 0.0
    if declared.frames is not None:
        short = frame_count < TRUNCATED_SHARE * declared.frames
        declares = f"{declared.seconds:.1f} s ({declared.frames} frames)"
    else:
        short = held_seconds < TRUNCATED_SHARE * declared.seconds
        declares = f"{declared.seconds:.1f} s"
    if not short:
        return None
    return (
        f"truncated: declares {declares}, holds {held_seconds:.1f} s ({frame_count} frames); "
        "the file was cut short (an interrupted download or copy?), fetch it again"
    )


def declared_content(path: str, container: str | None, stderr_text: str) -> Declared | None:
    """What the header of `path` declares about its video stream, for the containers that declare it; else None."""
    if container == AVI_FORMAT:
        return avi_declared(path)
    if container == MATROSKA_FORMAT:
        match = _DURATION.search(stderr_text)
        if match is None:
            return None
        hours, minutes, seconds = match.groups()
        total = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
        return Declared(seconds=total, frames=None, cut=_ENDED_EARLY in stderr_text) if total > 0 else None
    return None


def avi_declared(path: str) -> Declared | None:
    """Frames and seconds the first video stream header (`strh`) of an AVI declares; None when it declares none.

    An OpenDML AVI (over 1 GB) chains RIFF chunks; the stream header's length counts all of them."""
    try:
        with open(path, "rb") as stream:
            stream.seek(0, 2)
            file_size = stream.tell()
            stream.seek(0)
            riff = stream.read(12)
            if len(riff) < 12 or riff[:4] != b"RIFF" or riff[8:12] != b"AVI ":
                return None
            header = _avi_header_list(stream)
            riff_end = _riff_end(stream, file_size)
    except OSError:
        return None
    if header is None:
        return None
    frames, scale, rate = _video_stream_length(header)
    if not frames or not scale or not rate:
        return None
    return Declared(seconds=frames * scale / rate, frames=frames, cut=riff_end > file_size)


def _avi_header_list(stream) -> bytes | None:
    """The body of the `LIST hdrl` chunk that follows the RIFF header (read at most _MAX_HEADER_BYTES)."""
    while True:
        chunk = stream.read(12)
        if len(chunk) < 8:
            return None
        name, size = chunk[:4], struct.unpack("<I", chunk[4:8])[0]
        if name == b"LIST" and chunk[8:12] == b"hdrl":
            return stream.read(min(size - 4, _MAX_HEADER_BYTES))
        if name == b"LIST" and chunk[8:12] == b"movi":
            return None  # the frames start before any header
        stream.seek(size + (size & 1) - 4, 1)


def _video_stream_length(header: bytes) -> tuple[int, int, int]:
    """(dwLength, dwScale, dwRate) of the first `vids` stream header inside `hdrl`; zeros when absent."""
    position = 0
    while position + 8 <= len(header):
        name = header[position:position + 4]
        size = struct.unpack("<I", header[position + 4:position + 8])[0]
        if name == b"LIST":
            position += 12  # descend into `LIST strl`: its chunks follow its 4-byte type
            continue
        body = header[position + 8:position + 8 + size]
        if name == b"strh" and len(body) >= 36 and body[:4] == b"vids":
            scale, rate, _start, length = struct.unpack("<IIII", body[20:36])
            return length, scale, rate
        position += 8 + size + (size & 1)
    return 0, 0, 0


def _riff_end(stream, file_size: int) -> int:
    """Where the last RIFF chunk (`RIFF AVI `, then OpenDML's `RIFF AVIX`) ends by its declared size."""
    offset = 0
    for _ in range(_MAX_RIFF_CHUNKS):
        stream.seek(offset)
        chunk = stream.read(8)
        if len(chunk) < 8 or chunk[:4] != b"RIFF":
            return offset
        size = struct.unpack("<I", chunk[4:8])[0]
        end = offset + 8 + size
        if end >= file_size:
            return end
        offset = end + (size & 1)
    return offset
