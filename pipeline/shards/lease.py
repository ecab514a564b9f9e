"""One writer per shard at a time, on any number of hosts: a lease file beside the shard.

`.shard-00003-of-00016.h5.lease` holds JSON {host, pid, started}. A writer takes it before it creates its temp
file and removes it once the shard is sealed or abandoned. It appears whole (written to a temp file, then
`os.link`ed onto the name, which fails when the name exists: one of any number of racing writers wins, on one
host or over NFS). While writing, a daemon thread touches it every `lease_seconds / 10` (at most 30 s): the
file's mtime is the renewal, so a reader never meets half-rewritten JSON. A thread, not the write loop, because
one video's decode or one teacher batch may take longer than any timeout worth waiting on; the lease then says
"this process is alive", which is what a successor needs to know.

A lease is stale, and a successor takes it over, when its holder is on this host and its pid is gone, or when it
was not renewed for `lease_seconds` (DISTINIT_SHARD_LEASE_SECONDS, default 300; hosts' clocks must agree to well
within that, as NTP keeps them). Taking over moves the stale file aside first and checks it is the one judged
stale, so two successors never both win. A writer that finds a live lease leaves the shard to its holder
(`ShardBusy`, naming host and pid).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import socket
import threading
import time
from pathlib import Path

from distinit.pipeline.config import seconds_from_environment
from distinit.pipeline.shards.format import ShardError

logger = logging.getLogger(__name__)

LEASE_SUFFIX = ".lease"
LEASE_SECONDS_VARIABLE = "DISTINIT_SHARD_LEASE_SECONDS"
DEFAULT_LEASE_SECONDS = 300.0
MAXIMUM_RENEW_SECONDS = 30.0
TAKE_ATTEMPTS = 3


def host_name() -> str:
    """This host's name as temp and lease files carry it: only [A-Za-z0-9._-]."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "unknown-host"


def lease_seconds() -> float:
    """How long an unrenewed lease stays live: DISTINIT_SHARD_LEASE_SECONDS, else 300."""
    return seconds_from_environment(LEASE_SECONDS_VARIABLE, DEFAULT_LEASE_SECONDS)


def lease_path(final_path: str | os.PathLike) -> Path:
    final_path = Path(final_path)
    return final_path.parent / f".{final_path.name}{LEASE_SUFFIX}"


def pid_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


@dataclasses.dataclass(frozen=True)
class Holder:
    """Who holds a lease, as its file says; `renewed` is the file's mtime, `identity` tells this file from a successor's."""

    host: str
    pid: int | None
    started: float | None
    renewed: float
    identity: tuple[int, int]

    def __str__(self) -> str:
        return f"{self.host} pid {self.pid}" if self.pid is not None else "a writer whose lease is unreadable"

    def is_live(self, seconds: float) -> bool:
        if time.time() - self.renewed > seconds:
            return False
        if self.host == host_name() and self.pid is not None:
            return pid_is_alive(self.pid)
        return True

    def is_me(self) -> bool:
        return self.host == host_name() and self.pid == os.getpid()


def read_holder(path: Path) -> Holder | None:
    """The lease's holder, or None when there is no lease. Unreadable JSON (a damaged file) is judged by its mtime."""
    try:
        with open(path, "rb") as stream:
            status = os.fstat(stream.fileno())
            raw = stream.read()
    except FileNotFoundError:
        return None
    try:
        content = json.loads(raw)
        host, pid, started = str(content["host"]), int(content["pid"]), float(content["started"])
    except (ValueError, KeyError, TypeError):
        host, pid, started = "", None, None
    return Holder(host, pid, started, status.st_mtime, (status.st_ino, status.st_mtime_ns))


def live_holder(final_path: str | os.PathLike, seconds: float | None = None) -> Holder | None:
    """The live holder of the shard's lease, if any (None: free, or stale)."""
    holder = read_holder(lease_path(final_path))
    if holder is not None and holder.is_live(lease_seconds() if seconds is None else seconds):
        return holder
    return None


def break_stale_lease(path: Path, holder: Holder) -> bool:
    """Remove the lease `holder` was read from; True when removed. Moved aside first and checked to be that very
    file (same inode and mtime): a lease a successor took in between, or the holder renewed, is put back."""
    aside = path.parent / f"{path.name}.{host_name()}.{os.getpid()}.stale.tmp"
    try:
        os.rename(path, aside)
    except FileNotFoundError:  # someone else removed it first
        return False
    try:
        status = os.stat(aside)
    except FileNotFoundError:  # a new holder cleaned it up as a leftover; what it was no longer matters
        return False
    removed = (status.st_ino, status.st_mtime_ns) == holder.identity
    if not removed:
        try:
            os.link(aside, path)
        except FileExistsError:
            logger.warning("%s: a live lease was moved aside while a third writer took the shard", path)
    aside.unlink(missing_ok=True)
    return removed


class ShardBusy(ShardError):
    """Another live writer holds the shard's lease; the message names it."""

    def __init__(self, final_path: Path, holder: Holder | None):
        self.final_path, self.holder = final_path, holder
        who = str(holder) if holder is not None else "another writer"
        super().__init__(f"{final_path.name} is being written by {who}; left to it")


class ShardLease:
    """The lease of one shard: `acquire()` (raises ShardBusy), renewed from a daemon thread, `release()`."""

    def __init__(self, final_path: str | os.PathLike, seconds: float | None = None):
        self.final_path = Path(final_path)
        self.path = lease_path(self.final_path)
        self.seconds = lease_seconds() if seconds is None else float(seconds)
        self.held = False
        self.lost = False  # a successor judged this lease stale and took it
        self._content: dict | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> "ShardLease":
        for _ in range(TAKE_ATTEMPTS):
            if self._try_create():
                self.held = True
                self._thread = threading.Thread(target=self._renew, name=f"lease {self.final_path.name}", daemon=True)
                self._thread.start()
                return self
            holder = read_holder(self.path)
            if holder is not None and holder.is_live(self.seconds):
                raise ShardBusy(self.final_path, holder)
            if holder is not None and break_stale_lease(self.path, holder):
                logger.warning("%s: taking over from %s, whose lease is stale", self.final_path.name, holder)
        raise ShardBusy(self.final_path, read_holder(self.path))

    def _try_create(self) -> bool:
        self._content = {"host": host_name(), "pid": os.getpid(), "started": time.time()}
        temporary = self.path.parent / f"{self.path.name}.{host_name()}.{os.getpid()}.tmp"
        temporary.write_text(json.dumps(self._content, sort_keys=True) + "\n")
        try:
            os.link(temporary, self.path)
        except FileExistsError:
            return False
        except FileNotFoundError:  # a new holder removed our temp as a leftover: the shard is taken
            return False
        finally:
            temporary.unlink(missing_ok=True)
        return True

    def still_held(self) -> bool:
        """Whether the lease file is still this writer's (checked before sealing)."""
        if not self.held or self.lost:
            return False
        try:
            return json.loads(self.path.read_bytes()) == self._content
        except (OSError, ValueError):
            return False

    def _renew(self) -> None:
        interval = min(MAXIMUM_RENEW_SECONDS, self.seconds / 10)
        while not self._stop.wait(interval):
            if not self.still_held():
                self.lost = True
                logger.warning("%s: lost its lease to %s", self.final_path.name, read_holder(self.path))
                return
            try:
                os.utime(self.path)
            except OSError as error:
                logger.warning("%s: cannot renew the lease (%s)", self.path, error)

    def release(self) -> None:
        """Stop renewing and remove the lease if it is still this writer's. Idempotent."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        if self.held and self.still_held():
            self.path.unlink(missing_ok=True)
        self.held = False


def shard_leases(folder: str | os.PathLike) -> list[tuple[Path, Holder]]:
    """(shard path, holder) of every lease file in `folder`, live or stale."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    leases = []
    for path in sorted(folder.glob(f".shard-*{LEASE_SUFFIX}")):
        holder = read_holder(path)
        if holder is not None:
            leases.append((path.parent / path.name[1:-len(LEASE_SUFFIX)], holder))
    return leases


def live_leases(folder: str | os.PathLike, seconds: float | None = None) -> list[tuple[Path, Holder]]:
    """(shard path, holder) of every shard in `folder` that a live writer holds."""
    seconds = lease_seconds() if seconds is None else seconds
    return [(final_path, holder) for final_path, holder in shard_leases(folder) if holder.is_live(seconds)]


def remove_stale_leases(folder: str | os.PathLike, seconds: float | None = None) -> None:
    """Remove the leases of writers that died (left by a kill between sealing a shard and releasing its lease)."""
    seconds = lease_seconds() if seconds is None else seconds
    for final_path, holder in shard_leases(folder):
        if not holder.is_live(seconds) and break_stale_lease(lease_path(final_path), holder):
            logger.info("removed the lease of %s on %s, a writer that is gone", holder, final_path.name)
