"""Decode videos in worker processes, ahead of the teachers, handing results back in input order."""

from __future__ import annotations

import collections
import concurrent.futures
import multiprocessing
import os
from typing import Iterable, Iterator

from extract.decode_worker import DecodedVideo, decode_video, exit_with_parent
from extract.sampling import SamplingConfig


class DecodePool:
    """`workers` spawned processes (0: decode in this process). `lookahead` videos are in flight at once,
    so decoding overlaps with teacher inference without holding every frame in memory."""

    def __init__(self, workers: int, sampling: SamplingConfig, short_side: int, timeout: float, lookahead: int | None = None):
        self.workers = workers
        self.arguments = (sampling, short_side, timeout)
        self.lookahead = lookahead or max(2, 3 * workers)
        self._executor = None
        if workers > 0:
            # spawn, not fork: the parent holds torch threads and teacher weights that must not be forked.
            self._executor = concurrent.futures.ProcessPoolExecutor(
                max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=exit_with_parent, initargs=(os.getpid(),),
            )

    def decode(self, videos: Iterable[tuple[str, str]]) -> Iterator[DecodedVideo]:
        """(video_id, path) pairs in, DecodedVideo out, same order."""
        if self._executor is None:
            for video_id, path in videos:
                yield decode_video(video_id, path, *self.arguments)
            return
        in_flight: collections.deque = collections.deque()
        for video_id, path in videos:
            in_flight.append(self._executor.submit(decode_video, video_id, path, *self.arguments))
            if len(in_flight) >= self.lookahead:
                yield in_flight.popleft().result()
        while in_flight:
            yield in_flight.popleft().result()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def __enter__(self) -> "DecodePool":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
