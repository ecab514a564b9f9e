"""A shard damaged before finalize (no manifest yet) is redone on a re-run, without hanging (issue 12 item 5).

One flipped bit in the size of an attribute's global-heap object made HDF5 loop forever reading it; the
re-run now compares the shard with the sha256 recorded beside it before HDF5 opens it. The re-runs are
subprocesses with a timeout, so a hang fails the test instead of blocking CI.
"""

from __future__ import annotations

from pathlib import Path

from bench.faults_trials.common import TIMED_OUT, make_video_folder, run_cli
from distinit.pipeline.hashing import sha256_file
from distinit.pipeline.shards import verify
from distinit.pipeline.shards.checksum import checksum_path

RERUN_TIMEOUT_SECONDS = 120.0
SKIPPED_VIDEOS_IN_THE_HEAP = b'[{"path":"'  # the JSON list of skipped videos, a global-heap object


def flip_heap_object_size(path: Path) -> None:
    """The damage that hung HDF5: bit 5 of the 8-byte size field before the skipped videos' JSON string."""
    data = bytearray(path.read_bytes())
    text = data.find(SKIPPED_VIDEOS_IN_THE_HEAP)
    assert text > 16, "no skipped video in this shard"
    data[text - 8] ^= 0x20
    path.write_bytes(bytes(data))


def garble_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[:64] = bytes(byte ^ 0xFF for byte in data[:64])
    path.write_bytes(bytes(data))


def drop_checksum(path: Path) -> None:
    """As a shard of an older distinit, or of a run killed between the shard's rename and its checksum."""
    checksum_path(path).unlink()


def test_a_shard_damaged_before_finalize_is_redone_on_rerun_without_hanging(tmp_path):
    videos = make_video_folder(tmp_path / "videos", 4)
    (videos / "z_empty.mp4").write_bytes(b"")  # skipped: its path lands in shard 0's attributes (the global heap)
    out = tmp_path / "out"
    arguments = ["extract", "--data", "folder", "--root", str(videos), "--out", str(out), "--shard-count", "2",
                 "--workers", "0", "--max-frames-per-video", "2", "--max-failure-rate", "0.5", "--no-progress"]
    first = run_cli([*arguments, "--shard", "0/2"], timeout=RERUN_TIMEOUT_SECONDS)
    assert first.returncode == 0, first.stderr[-2000:]
    targets_dir = next((out / "folder").iterdir())
    shard = targets_dir / "shard-00000-of-00002.h5"
    assert not (targets_dir / "manifest.json").exists()
    pristine = sha256_file(shard)
    for damage, reason in ((flip_heap_object_size, "differs from the"), (garble_header, "differs from the"),
                           (drop_checksum, "no sha256 recorded")):
        damage(shard)
        rerun = run_cli([*arguments, "--shard", "0/2"], timeout=RERUN_TIMEOUT_SECONDS)
        assert rerun.returncode != TIMED_OUT, f"{damage.__name__}: the re-run hung"
        assert rerun.returncode == 0, f"{damage.__name__}: {rerun.stderr[-2000:]}"
        redone = [line for line in rerun.stderr.splitlines() if f"redoing {shard.name}: " in line]
        assert len(redone) == 1 and reason in redone[0], f"{damage.__name__}: {rerun.stderr[-2000:]}"
        assert sha256_file(shard) == pristine, f"{damage.__name__}: the redone shard differs"
        assert checksum_path(shard).read_text() == f"{pristine}  {shard.name}\n"
    # The rest of the run keeps the redone shard and seals a folder that verifies.
    sealed = run_cli(arguments, timeout=RERUN_TIMEOUT_SECONDS)
    assert sealed.returncode == 0, sealed.stderr[-2000:]
    assert "redoing" not in sealed.stderr and sha256_file(shard) == pristine
    assert verify(targets_dir) == []
