"""Training datasets skip a video that does not decode, within a budget: shared by distill and evaluate.

A sample whose video fails is replaced by the next sample whose video is not known to be bad, so the
replacement is deterministic whatever the worker. Each process counts its own failures; past the
budget the run stops with one line, since that many bad videos means a wrong root or a broken copy.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Hashable

from distinit.pipeline.errors import DistinitError, VideoError

logger = logging.getLogger(__name__)


class DecodeFailures:
    """The videos this process could not decode, and the budget for them (picklable: workers get a copy)."""

    def __init__(self, max_failures: int, too_many: str) -> None:
        self.max_failures = max_failures
        self.too_many = too_many  # the one-line message once the budget is spent, with {path} and {reason}
        self.count = 0
        self.videos: set[Hashable] = set()

    def record(self, video: Hashable, description: str, error: VideoError) -> None:
        self.count += 1
        self.videos.add(video)
        logger.warning("skipping %s: %s (%d failures in this process)", description, error.reason, self.count)
        if self.count > self.max_failures:
            raise DistinitError(self.too_many.format(path=error.path, reason=error.reason))


def sample_skipping_failures(
    index: int,
    length: int,
    video_of: Callable[[int], Hashable],
    describe: Callable[[int], str],
    sample: Callable[[int], dict[str, Any]],
    failures: DecodeFailures,
    none_decodes: str,
) -> dict[str, Any]:
    """`sample(index)`, or of the next index (cyclically) whose video decodes; `none_decodes` if none does."""
    if not 0 <= index < length:
        raise IndexError(f"sample {index} outside a dataset of {length}")
    for offset in range(length):
        candidate = (index + offset) % length
        video = video_of(candidate)
        if video in failures.videos:
            continue
        try:
            return sample(candidate)
        except VideoError as error:
            failures.record(video, describe(candidate), error)
    raise DistinitError(none_decodes)
