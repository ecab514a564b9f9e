"""Errors a user can act on. The CLI prints them as one line and exits non-zero."""

import os


class DistinitError(Exception):
    """Base class: the message names the thing at fault and says what to do."""


class ConfigError(DistinitError):
    """An unknown option, a wrong type, or an unreadable config file."""


class DatasetError(DistinitError):
    """A dataset layout that does not match what its adapter expects."""


class VideoError(DistinitError):
    """A video that cannot be probed or decoded (corrupt, truncated, audio-only, not a video, timed out)."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class OutputError(DistinitError):
    """An output that cannot be written: a file where a folder should be, no permission, a full disk."""


def describe_os_error(error: BaseException) -> str:
    """The operating system's reason in a few words, on one line (h5py and torch wrap it in long,
    multi-line text; the errno says it best when there is one)."""
    number = getattr(error, "errno", None)
    if isinstance(number, int) and number > 0:
        return os.strerror(number)
    text = " ".join(str(error).split())
    return text[:200] if text else type(error).__name__


def output_error(path, error: BaseException) -> OutputError:
    """`PATH: cannot write (No space left on device); ...` for an error met while writing `path`."""
    return OutputError(
        f"{path}: cannot write ({describe_os_error(error)}); check that its folder is writable and has free space"
    )
