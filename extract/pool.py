"""Decode videos in worker processes, ahead of the teachers, handing results back in input order.

A scheduler signals every process of a job (SLURM: SIGTERM on preemption, the USR1 a job asked for), workers
included. The main process stops cleanly at its next video (pipeline.preemption) and closes the pool; a worker
that died of the signal first would break the pool under it. So workers ignore those signals, and are started
with them blocked (a spawned worker has default handlers until its initializer runs), as is multiprocessing's
resource tracker, which ignores SIGTERM itself but would die of SIGUSR1 and be relaunched with a warning.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import multiprocessing
import os
import signal
from multiprocessing import resource_tracker
from typing import Iterable, Iterator

from distinit.extract.decode_worker import DecodedVideo, decode_video, start_worker
from distinit.extract.sampling import SamplingConfig
from distinit.pipeline.preemption import PREEMPTION_SIGNALS


@contextlib.contextmanager
def preemption_signals_blocked() -> Iterator[None]:
    """Block the preemption signals in this thread: processes it starts inherit the mask. A signal arriving meanwhile
    is not lost: another thread takes it, or it waits until the block ends (Python runs its handler either way)."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, PREEMPTION_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


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
            with preemption_signals_blocked():  # the executor's locks start the resource tracker
                self._executor = concurrent.futures.ProcessPoolExecutor(
                    max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                    initializer=start_worker, initargs=(os.getpid(),),
                )
                resource_tracker.ensure_running()  # started here whatever the executor's internals do

    def decode(self, videos: Iterable[tuple[str, str]]) -> Iterator[DecodedVideo]:
        """(video_id, path) pairs in, DecodedVideo out, same order."""
        if self._executor is None:
            for video_id, path in videos:
                yield decode_video(video_id, path, *self.arguments)
            return
        in_flight: collections.deque = collections.deque()
        for video_id, path in videos:
            with preemption_signals_blocked():  # submit starts workers as they are needed
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
