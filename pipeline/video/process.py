"""Run one ffmpeg command with a hard timeout and turn its failures into `VideoError`.

ffmpeg-python's own `run()` has no timeout, so a stuck ffmpeg (a named pipe, a stalled network
mount) would hang a worker forever. Here a watchdog timer kills the process; the call always waits
for it, so no zombie is left behind, and stdout is read straight into one preallocated buffer so a
large clip is not copied twice.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import subprocess
import threading

from distinit.pipeline.errors import VideoError

logger = logging.getLogger(__name__)

GLOBAL_ARGUMENTS = ["-nostdin", "-hide_banner", "-nostats"]
_READ_CHUNK_BYTES = 1 << 20
_KEPT_STDERR_CHARS = 64 * 1024

# Lines ffmpeg prints around the real error; they name no cause, so they are skipped.
_WRAPPER_LINE = re.compile(
    r"^(Error opening (input|output) files?\b|Error parsing options|To ignore this, add a trailing|"
    r"Failed to set value '.*' for option|Conversion failed!|Exiting normally|frame=\s*\d|"
    r"Input #|Output #|Stream mapping:|Press \[q\]|video:\d+\S*B audio:|.*misdetection possible|"
    # ffmpeg 7+ scheduler epilogue after a decoder gave up
    r"Task finished with error code|Terminating thread with return code|Nothing was written into output file|"
    r"Could not open encoder before EOF|Cannot determine format of input|Output file is empty)"
)
_COMPONENT_PREFIX = re.compile(r"^(\[[^\]]* @ 0x[0-9a-f]+\] ?)+")


def check_video_path(path: str) -> None:
    """Reject what ffmpeg would fail on slowly or hang on: missing, empty, a folder, a FIFO, a device."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        raise VideoError(path, "no such file; check the path") from None
    except OSError as error:
        raise VideoError(path, f"cannot stat file: {error.strerror}") from None
    if stat.S_ISDIR(status.st_mode):
        raise VideoError(path, "is a directory, not a video file")
    if stat.S_ISFIFO(status.st_mode):
        raise VideoError(path, "is a named pipe (FIFO), not a video file; pass a regular file")
    if not stat.S_ISREG(status.st_mode):
        raise VideoError(path, "is not a regular file (device or socket); pass a video file")
    if status.st_size == 0:
        raise VideoError(path, "empty file (0 bytes)")
    if not os.access(path, os.R_OK):
        raise VideoError(path, "file is not readable (permission denied)")


def ffmpeg_reason(stderr_text: str, path: str) -> str:
    """ffmpeg's own explanation: the last two meaningful stderr lines, without pointers and the path."""
    meaningful: list[str] = []
    for raw_line in stderr_text.splitlines():
        if raw_line[:1].isspace():  # indented stream and metadata details of the header
            continue
        line = _COMPONENT_PREFIX.sub("", raw_line.strip())
        for prefix in (f"{path}: ", f"'{path}': "):
            if line.startswith(prefix):
                line = line[len(prefix):]
        if not line or _WRAPPER_LINE.match(line):
            continue
        if "matches no streams" in line:
            return "no video stream"
        if not meaningful or meaningful[-1] != line:
            meaningful.append(line)
    if not meaningful:
        return "ffmpeg failed without an error message"
    return "; ".join(meaningful[-2:])


def _drain_stderr(stream, chunks: list[str]) -> None:
    kept = 0
    for raw_line in iter(stream.readline, b""):
        text = raw_line.decode("utf-8", "replace")
        chunks.append(text)
        kept += len(text)
        # ffmpeg can repeat a decode warning per frame; keep only the newest part of a long log.
        if kept > 2 * _KEPT_STDERR_CHARS:
            joined = "".join(chunks)[-_KEPT_STDERR_CHARS:]
            chunks[:] = [joined]
            kept = len(joined)


def _read_stdout(stream, expected_bytes: int | None) -> bytearray:
    if expected_bytes is None:
        return bytearray(stream.read())
    buffer = bytearray(expected_bytes)
    view = memoryview(buffer)
    filled = 0
    while filled < expected_bytes:
        count = stream.readinto(view[filled:filled + _READ_CHUNK_BYTES])
        if not count:
            break
        filled += count
    view.release()
    # Anything beyond what was asked for is a planning bug upstream; drain it so ffmpeg can exit.
    surplus = len(stream.read())
    if surplus:
        logger.debug("ffmpeg wrote %d bytes more than the %d expected", surplus, expected_bytes)
    del buffer[filled:]
    return buffer


def run_ffmpeg(
    command: list[str], path: str, timeout: float, expected_bytes: int | None = None, call_timeout: float | None = None
) -> tuple[bytearray, str]:
    """Run `command`, return (stdout bytes, stderr text); raise VideoError on timeout or non-zero exit.

    `expected_bytes` sizes the stdout buffer; a shorter stdout is returned as is (the caller decides
    whether a short read is an error). `timeout` is what is left of a caller's `call_timeout`, which
    the error message names (default: timeout itself).
    """
    timeout_message = f"timed out after {call_timeout if call_timeout is not None else timeout:g}s"
    if timeout <= 0:
        raise VideoError(path, timeout_message)
    logger.debug("running %s", " ".join(command))
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    timed_out = threading.Event()

    def kill_on_timeout() -> None:
        timed_out.set()
        process.kill()

    watchdog = threading.Timer(timeout, kill_on_timeout)
    stderr_chunks: list[str] = []
    stderr_reader = threading.Thread(target=_drain_stderr, args=(process.stderr, stderr_chunks), daemon=True)
    watchdog.start()
    stderr_reader.start()
    try:
        stdout = _read_stdout(process.stdout, expected_bytes)
        return_code = process.wait()
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
        process.wait()
        stderr_reader.join()
        process.stdout.close()
        process.stderr.close()
    stderr_text = "".join(stderr_chunks)
    if return_code != 0:
        # A watchdog that fires just after a clean exit changes nothing, hence the return code check first.
        if timed_out.is_set():
            raise VideoError(path, timeout_message)
        raise VideoError(path, ffmpeg_reason(stderr_text, path))
    return stdout, stderr_text
