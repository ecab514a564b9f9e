"""Several writers of one folder, on one host or many (issue 20, item 5): temp names carry host and pid, a shard
has one writer at a time (its lease), a dead or expired writer's shard is taken over, a live one's is left alone."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.faults_trials.common import make_video_folder
from distinit.extract.config import ExtractConfig
from distinit.extract.run import run_extraction
from distinit.pipeline import atomic
from distinit.pipeline.cli import main
from distinit.pipeline.hashing import sha256_file
from distinit.pipeline.shards import ShardBusy, ShardWriter, shard_name, temporary_files, verify
from distinit.pipeline.shards.lease import host_name, lease_path, read_holder
from test_shards import ATTRIBUTES, TEACHERS, video_rows

REPOSITORY = Path(__file__).resolve().parents[1]
# A writer in another process: opens the shard, writes rows, says so, then closes or aborts on command.
HOLDER_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from test_shards import ATTRIBUTES, TEACHERS, video_rows
from distinit.pipeline.shards import ShardWriter
writer = ShardWriter({path!r}, teachers=TEACHERS, shard_index={index}, shard_count={count}, attributes=ATTRIBUTES)
writer.append(video_rows("held", 3))
print(writer.temporary_path, flush=True)
command = sys.stdin.readline().strip()
writer.close() if command == "close" else writer.abort()
"""


class HolderProcess:
    """A live writer of `final_path` in a process of its own (it holds the lease and a temp file)."""

    def __init__(self, final_path: Path, index: int, count: int):
        script = HOLDER_SCRIPT.format(tests=str(REPOSITORY / "tests"), path=str(final_path), index=index, count=count)
        self.process = subprocess.Popen(
            [sys.executable, "-c", script], cwd=REPOSITORY, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        line = self.process.stdout.readline().strip()
        assert line, f"the holder process failed (exit {self.process.wait()})"
        self.temporary_path = Path(line)
        self.pid = self.process.pid

    def finish(self, command: str) -> None:
        self.process.communicate(command + "\n", timeout=60)
        assert self.process.returncode == 0

    def kill(self) -> None:
        self.process.kill()
        self.process.communicate(timeout=60)


def open_writer(final_path: Path, index: int = 0, count: int = 2, **options) -> ShardWriter:
    return ShardWriter(final_path, teachers=TEACHERS, shard_index=index, shard_count=count, attributes=ATTRIBUTES,
                       **options)


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def plant_lease(final_path: Path, host: str, pid: int, age_seconds: float = 0.0) -> Path:
    path = lease_path(final_path)
    path.write_text(json.dumps({"host": host, "pid": pid, "started": time.time() - age_seconds}))
    renewed = time.time() - age_seconds
    os.utime(path, (renewed, renewed))
    return path


def test_temp_names_carry_host_and_pid_and_every_form_is_found(tmp_path, monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "node 7.cluster:a/b")
    assert host_name() == "node_7.cluster_a_b"
    final_path = tmp_path / shard_name(3, 16)
    legacy = tmp_path / f".{final_path.name}.99999.tmp"  # written by versions before hosts were named
    legacy.write_bytes(b"half a shard")
    with open_writer(final_path, 3, 16) as writer:
        assert writer.temporary_path.name == f".shard-00003-of-00016.h5.node_7.cluster_a_b.{os.getpid()}.tmp"
        assert not legacy.exists()  # this writer holds the lease, so whoever left it is gone
        legacy.write_bytes(b"half a shard")
        assert temporary_files(tmp_path) == sorted([legacy, writer.temporary_path])
        assert atomic.leftover_temporary_files(tmp_path, final_path.name) == sorted([legacy, writer.temporary_path])
        writer.append(video_rows("a", 2))
    legacy.unlink()
    assert sorted(path.name for path in tmp_path.iterdir()) == [final_path.name, final_path.name + ".sha256"]


def test_a_live_writer_keeps_its_shard_and_its_temp_file(tmp_path):
    final_path = tmp_path / shard_name(0, 2)
    holder = HolderProcess(final_path, 0, 2)
    try:
        assert json.loads(lease_path(final_path).read_text())["pid"] == holder.pid
        with pytest.raises(ShardBusy) as refused:
            open_writer(final_path)
        assert str(refused.value) == f"{final_path.name} is being written by {host_name()} pid {holder.pid}; left to it"
        assert temporary_files(tmp_path) == [holder.temporary_path]  # the second writer deleted nothing
        assert not final_path.exists()
        holder.finish("close")
    finally:
        if holder.process.poll() is None:
            holder.kill()
    assert final_path.exists() and not lease_path(final_path).exists()
    assert temporary_files(tmp_path) == []


def test_a_dead_writers_shard_is_taken_over_and_its_temp_files_removed(tmp_path):
    final_path = tmp_path / shard_name(1, 2)
    pid = dead_pid()
    plant_lease(final_path, host_name(), pid)  # renewed just now, but its process is gone
    leftovers = [tmp_path / f".{final_path.name}.{host_name()}.{pid}.tmp", tmp_path / f".{final_path.name}.far-host.7.tmp"]
    for path in leftovers:
        path.write_bytes(b"half a shard")
    with open_writer(final_path, 1, 2) as writer:
        assert temporary_files(tmp_path) == [writer.temporary_path]
        assert read_holder(lease_path(final_path)).is_me()
        writer.append(video_rows("a", 2))
    assert not lease_path(final_path).exists() and temporary_files(tmp_path) == []


def test_another_hosts_lease_is_kept_while_renewed_and_taken_over_once_expired(tmp_path):
    final_path = tmp_path / shard_name(0, 2)
    plant_lease(final_path, "far-host", 12345, age_seconds=5)
    far_temporary = tmp_path / f".{final_path.name}.far-host.12345.tmp"
    far_temporary.write_bytes(b"being written over there")
    with pytest.raises(ShardBusy, match="far-host pid 12345"):
        open_writer(final_path, lease_seconds=60)
    assert far_temporary.exists()
    plant_lease(final_path, "far-host", 12345, age_seconds=61)
    with open_writer(final_path, lease_seconds=60) as writer:
        assert not far_temporary.exists()
        writer.append(video_rows("a", 2))
    assert final_path.exists() and not lease_path(final_path).exists()


def test_the_lease_is_renewed_while_writing(tmp_path):
    final_path = tmp_path / shard_name(0, 2)
    with open_writer(final_path, lease_seconds=0.5) as writer:  # renewed every 0.05 s
        os.utime(writer.lease.path, (0, 0))
        time.sleep(0.3)
        assert time.time() - writer.lease.path.stat().st_mtime < 0.3
        writer.append(video_rows("a", 2))


def test_a_writer_whose_lease_was_taken_over_does_not_seal(tmp_path):
    final_path = tmp_path / shard_name(0, 2)
    writer = open_writer(final_path)
    writer.append(video_rows("a", 2))
    plant_lease(final_path, "far-host", 12345)  # a successor judged this writer stale and took the shard
    with pytest.raises(ShardBusy, match="far-host pid 12345"):
        writer.close()
    assert not final_path.exists() and temporary_files(tmp_path) == []
    assert read_holder(lease_path(final_path)).host == "far-host"  # the successor's lease stays


# ---------------------------------------------------------------------------------------------- extract
@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    return make_video_folder(tmp_path_factory.mktemp("videos"), 4)


def folder_snapshot(folder: Path) -> dict[str, str]:
    return {path.name: sha256_file(path) for path in sorted(folder.iterdir())}


def test_extract_leaves_a_held_shard_and_finalize_refuses_while_it_is_written(videos, tmp_path):
    config = ExtractConfig(data="folder", root=str(videos), out=str(tmp_path), shard_count=2, workers=0,
                           max_frames_per_video=2)
    targets_dir = run_extraction(config, (0, 2), show_progress=False).targets_dir
    held = targets_dir / shard_name(1, 2)
    holder = HolderProcess(held, 1, 2)
    try:
        report = run_extraction(config, show_progress=False)
        assert report.shards_written == [] and report.shards_busy == {1: f"{host_name()} pid {holder.pid}"}
        assert report.manifest is None and holder.temporary_path.exists()  # not finalized, nothing of the holder's removed

        before = folder_snapshot(targets_dir)
        result = CliRunner().invoke(main, ["extract", "--data", "folder", "--root", str(videos), "--out", str(tmp_path),
                                           "--shard-count", "2", "--max-frames-per-video", "2", "--finalize"])
        assert result.exit_code == 1
        assert result.output.count("\n") == 1 and result.output.startswith("Error: "), result.output
        assert f"{held.name} ({host_name()} pid {holder.pid})" in result.output
        assert folder_snapshot(targets_dir) == before
    finally:
        holder.kill()  # killed mid-write: its lease and temp file stay, as a SIGKILL leaves them

    pid_file = targets_dir / f".{shard_name(0, 2)}.{host_name()}.{holder.pid}.tmp"
    pid_file.write_bytes(b"a dead writer's leftover")  # of a finished shard: only finalize removes it
    report = run_extraction(config, show_progress=False)
    assert report.shards_written == [1] and report.manifest is not None
    assert verify(targets_dir) == []
    assert temporary_files(targets_dir) == [] and list(targets_dir.glob(".*.lease")) == []
