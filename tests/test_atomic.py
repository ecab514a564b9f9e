"""Atomic writes leave either the old file or the new one, never a partial file or a temp file."""

import errno
import threading

import pytest

from distinit.pipeline import atomic
from distinit.pipeline.atomic import atomic_path, atomic_write_text


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.txt"]


def test_failed_write_keeps_old_content(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as temporary:
            temporary.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_a_shared_file_written_at_once_by_two_writers_loses_neither_write(tmp_path, monkeypatch):
    """Two extractions of one dataset finalizing together both write its `latest`: the second must not take
    the first's in-flight temp file for a killed writer's leftover and delete it (its rename would then fail)."""
    target = tmp_path / "latest"
    (tmp_path / ".latest.k1ll3d.tmp").write_text("left by a killed writer")
    in_flight, finish = threading.Event(), threading.Event()
    real_write = atomic.atomic_write_text

    def paused_write(path, text):  # the first writer stops with its temp file written, before the rename
        if text != "first\n":
            return real_write(path, text)
        with atomic.atomic_path(path) as temporary:
            temporary.write_text(text)
            in_flight.set()
            assert finish.wait(10)

    monkeypatch.setattr(atomic, "atomic_write_text", paused_write)
    errors = []

    def write(text):
        try:
            atomic.replace_shared_text(target, text)
        except Exception as error:  # reported below: the test must not hang on a failed thread
            errors.append(error)

    first = threading.Thread(target=write, args=("first\n",))
    first.start()
    assert in_flight.wait(10)
    in_flight_temporary = atomic.leftover_temporary_files(tmp_path, "latest")
    assert len(in_flight_temporary) == 1 and in_flight_temporary[0].name != ".latest.k1ll3d.tmp"  # that one it removed
    second = threading.Thread(target=write, args=("second\n",))
    second.start()
    second.join(0.5)
    assert second.is_alive(), "the second writer did not wait for the first"
    assert atomic.leftover_temporary_files(tmp_path, "latest") == in_flight_temporary  # untouched
    finish.set()
    first.join(10)
    second.join(10)
    assert errors == [] and target.read_text() == "second\n"
    assert atomic.leftover_temporary_files(tmp_path, "latest") == []


def test_a_filesystem_that_cannot_lock_still_gets_the_write(tmp_path, monkeypatch, caplog):
    # NFS or Lustre mounted without lock support: flock fails with ENOLCK. Finalize must not fail at its very end.
    def no_locks(descriptor, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(atomic.fcntl, "flock", no_locks)
    atomic.replace_shared_text(tmp_path / "latest", "0123\n")
    assert (tmp_path / "latest").read_text() == "0123\n"
    assert "cannot lock" in caplog.text and "going on without the lock" in caplog.text
