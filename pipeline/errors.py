"""Errors a user can act on. The CLI prints them as one line and exits non-zero."""


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
