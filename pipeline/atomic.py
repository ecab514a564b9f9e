"""Atomic writes: write to a temporary name in the same folder, then rename over the target.

A reader never sees a half-written file, and an interrupted write leaves the old file untouched.
A process killed mid-write (SIGKILL, power loss) cannot remove its temp file; the writer that next
owns the folder removes such leftovers (`remove_leftover_temporary_files`). A file that several
processes write (`targets/<data>/latest`) is written under a lock instead (`replace_shared_text`).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import tempfile
from pathlib import Path
from typing import Iterator

from distinit.pipeline.errors import OutputError, describe_os_error, output_error

logger = logging.getLogger(__name__)


def make_output_folder(folder: str | os.PathLike, option: str = "--out") -> Path:
    """`folder` and its parents, created if missing; a file in the way or a folder that cannot be
    written is a one-line OutputError naming it (`option` is the flag the user can change)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocking = next((path for path in [folder, *folder.parents] if path.exists() and not path.is_dir()), folder)
        raise OutputError(f"{blocking}: is a file, not a folder; pass a folder as {option} or move the file away") from None
    except OSError as error:
        raise OutputError(
            f"{folder}: cannot create the folder ({describe_os_error(error)}); pass a writable {option} with free space"
        ) from None
    return folder


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only if the block succeeds.

    An OSError while writing (in the block, or the rename) becomes a one-line OutputError naming `target`."""
    target = Path(target)
    make_output_folder(target.parent)
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix + ".tmp", dir=target.parent)
    except OSError as error:
        raise output_error(target, error) from None
    os.close(handle)
    # mkstemp creates 0600; give the file the mode an ordinary open() would, so shared storage stays readable.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    temporary = Path(temporary)
    try:
        yield temporary
        os.replace(temporary, target)
    except OSError as error:
        raise output_error(target, error) from None
    finally:
        if temporary.exists():
            temporary.unlink()


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as temporary:
        with open(temporary, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())


def atomic_write_text(target: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(target, text.encode("utf-8"))


def leftover_temporary_files(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Temp files of interrupted writes in `folder`: `.<name>.<anything>.tmp` (this module's and the shard
    writer's names), for target `name` only, or for every target when `name` is None."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    prefix = "." if name is None else f".{name}."
    return sorted(
        path for path in folder.iterdir()
        if path.name.startswith(prefix) and path.name.endswith(".tmp") and path.name.count(".") >= 3 and path.is_file()
    )


def remove_leftover_temporary_files(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Delete what `leftover_temporary_files` finds. Only for a caller that owns the folder now: a
    temp file of a writer that is still running would be pulled from under it."""
    removed = []
    for path in leftover_temporary_files(folder, name):
        path.unlink(missing_ok=True)
        logger.info("removed %s, left by an interrupted write", path)
        removed.append(path)
    return removed


@contextlib.contextmanager
def exclusive_lock(lock_file: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive `flock` on `lock_file` (created if missing) for the block. The kernel releases it when
    its holder exits, killed or not, so it is never stale; the file stays (removing it would race the next
    holder, who may have opened the old one). Where the filesystem cannot lock, the block runs unlocked, with a
    warning: as it was before the lock, rather than failing at the end of a finished stage."""
    lock_file = Path(lock_file)
    make_output_folder(lock_file.parent)
    try:
        descriptor = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as error:
        raise output_error(lock_file, error) from None
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        except OSError as error:  # e.g. ENOLCK: a network filesystem mounted without lock support
            logger.warning("%s: cannot lock (%s); going on without the lock", lock_file, describe_os_error(error))
        yield
    finally:
        os.close(descriptor)  # releases the lock


def replace_shared_text(target: str | os.PathLike, text: str) -> None:
    """Atomically write `target`, a file that several processes may write at the same time (two extractions of
    one dataset finalizing together both write its `latest`). Every writer holds `.<name>.lock` beside it from
    before its temp file exists until after the rename, so a temp file of `target` found under the lock was
    left by a killed writer and is removed; one of a live writer cannot be, as `remove_leftover_temporary_files`
    alone would (the last writer's text wins, as with any rename)."""
    target = Path(target)
    with exclusive_lock(target.parent / f".{target.name}.lock"):
        remove_leftover_temporary_files(target.parent, target.name)
        atomic_write_text(target, text)
