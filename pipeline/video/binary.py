"""Which ffmpeg binary to run.

Order: the `FFMPEG_BINARY` variable (a path, or `system` for the `ffmpeg` on PATH), else the static
binary inside the imageio-ffmpeg wheel, so nothing but pip is needed.
"""

from __future__ import annotations

import functools
import os
import shutil

from distinit.pipeline.errors import DistinitError


@functools.lru_cache(maxsize=None)
def _resolve(choice: str | None) -> str:
    if choice:
        if choice == "system":
            found = shutil.which("ffmpeg")
            if not found:
                raise DistinitError("FFMPEG_BINARY=system but no ffmpeg is on PATH; install ffmpeg or unset FFMPEG_BINARY")
            return found
        if not (os.path.isfile(choice) and os.access(choice, os.X_OK)):
            raise DistinitError(f"FFMPEG_BINARY={choice} is not an executable file; fix the path or unset it")
        return choice
    try:
        import imageio_ffmpeg
    except ImportError:
        found = shutil.which("ffmpeg")
        if found:
            return found
        raise DistinitError("no ffmpeg found: pip install imageio-ffmpeg, or set FFMPEG_BINARY to an ffmpeg binary") from None
    return imageio_ffmpeg.get_ffmpeg_exe()


def ffmpeg_binary() -> str:
    """Path of the ffmpeg executable to use (cached per value of FFMPEG_BINARY)."""
    return _resolve(os.environ.get("FFMPEG_BINARY") or None)
