"""Fast checks of what the trials found, at the level of the functions that were fixed."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys

import numpy as np
import pytest

from distinit.distill.checkpoint import tidy_for_resume, trim_epoch_log
from distinit.extract.decode_worker import aspect_problem
from distinit.pipeline.atomic import atomic_write_text, leftover_temporary_files, make_output_folder, remove_leftover_temporary_files
from distinit.pipeline.errors import OutputError
from distinit.pipeline.shards import ShardWriter, write_manifest


def test_leftover_temp_files_of_killed_writes_are_found_per_target(tmp_path):
    for name in (".manifest.json.ab12cd.tmp", ".latest.x9.tmp", ".shard-00001-of-00002.h5.4242.tmp", "manifest.json",
                 ".hidden", "notes.tmp"):
        (tmp_path / name).write_text("x")
    assert [path.name for path in leftover_temporary_files(tmp_path, "latest")] == [".latest.x9.tmp"]
    removed = remove_leftover_temporary_files(tmp_path)
    assert sorted(path.name for path in removed) == [".latest.x9.tmp", ".manifest.json.ab12cd.tmp",
                                                     ".shard-00001-of-00002.h5.4242.tmp"]
    assert sorted(path.name for path in tmp_path.iterdir()) == [".hidden", "manifest.json", "notes.tmp"]


def test_epoch_log_keeps_only_epochs_the_checkpoint_finished(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps({"epoch": epoch, "step": 5 * epoch}) + "\n" for epoch in (1, 2, 2)) + '{"epo')
    assert trim_epoch_log(log, completed_epochs=1) == 3  # the repeated epoch 2, the new one, the half line
    assert [json.loads(line)["epoch"] for line in log.read_text().splitlines()] == [1]
    assert trim_epoch_log(log, completed_epochs=1) == 0
    (tmp_path / ".checkpoint-last.pt.q1w2.tmp").write_bytes(b"half")
    tidy_for_resume(tmp_path, completed_epochs=0)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["log.jsonl"] and log.read_text() == ""


def test_extreme_aspect_ratios_are_refused_before_decoding():
    assert aspect_problem(1920, 1080, 256) is None and aspect_problem(1080, 1920, 256) is None
    assert aspect_problem(8000, 8000, 256) is None
    reason = aspect_problem(8000, 16, 256)
    assert "500:1" in reason and "128000 px" in reason


def test_output_folder_errors_are_one_line_and_name_the_culprit(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    with pytest.raises(OutputError, match=r"a-file: is a file, not a folder; pass a folder as --out"):
        make_output_folder(a_file / "folder" / "key")
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(OutputError, match=r"folder: cannot write \(Is a directory\)"):
        atomic_write_text(folder, "text onto a folder")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a-file", "folder"]


def _tiny_targets(folder):
    """One shard with a skipped video (its reason lands in an attribute, in HDF5's global heap) + manifest."""
    teacher = {"name": "t", "outputs": [{"name": "logits", "shape": [10], "dtype": "float32", "kind": "logits"}]}
    attributes = {"dataset": "d", "stage_key": "k", "code_version": "c", "sampling": {}}
    shard = folder / "shard-00000-of-00001.h5"
    with ShardWriter(shard, teachers=[teacher], shard_index=0, shard_count=1, attributes=attributes) as writer:
        writer.add_skipped("bad_video", "/videos/bad_video.mp4", "empty file (0 bytes)")
        writer.append({"video_id": ["v"] * 4, "t_seconds": np.arange(4.0), "frame_index": np.arange(4),
                       "t/logits": np.zeros((4, 10), np.float32), "t/view_box": np.float32([[0, 0, 1, 1]] * 4)})
    write_manifest(folder, config={}, shards=[shard])
    return shard


def test_verify_does_not_hang_on_a_damaged_attribute_heap(tmp_path):
    """One bit of a global-heap object's size (no checksum covers it) made HDF5 loop forever reading the
    attribute; verify now reads only the checksummed datasets of a shard whose sha256 is wrong."""
    shard = _tiny_targets(tmp_path)
    data = bytearray(shard.read_bytes())
    text = data.find(b'[{"path":"/videos/bad_video.mp4"')
    assert text > 16
    data[text - 8] ^= 0x20  # the heap object's 8-byte size field precedes its bytes
    shard.write_bytes(bytes(data))
    script = "import sys; from distinit.pipeline.shards import verify; print('\\n'.join(verify(sys.argv[1])))"
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "shard-00000-of-00001.h5: sha256" in done.stdout


SHARD_ON_A_FULL_DISK = """
import sys
import numpy as np
from distinit.pipeline.shards import ShardError, ShardWriter
teacher = {"name": "t", "outputs": [{"name": "logits", "shape": [1000], "dtype": "float32", "kind": "logits"}]}
attributes = {"dataset": "d", "stage_key": "k", "code_version": "c", "sampling": {}}
try:
    with ShardWriter(sys.argv[1], teachers=[teacher], shard_index=0, shard_count=1, attributes=attributes) as writer:
        for _ in range(4):
            writer.append({"video_id": ["v"] * 30, "t_seconds": np.zeros(30), "frame_index": np.zeros(30, np.int64),
                           "t/logits": np.random.default_rng(0).random((30, 1000), dtype=np.float32),
                           "t/view_box": np.float32([[0, 0, 1, 1]] * 30)})
except ShardError as error:
    print(error)
"""


def test_a_full_disk_while_writing_a_shard_is_one_error_not_a_crash(tmp_path):
    """With HDF5's chunk cache the failed write surfaced in a dataset's deallocation, leaked it, and the
    process died with SIGSEGV in HDF5's exit handler."""
    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    shard = tmp_path / "shard-00000-of-00001.h5"
    done = subprocess.run([sys.executable, "-c", SHARD_ON_A_FULL_DISK, str(shard)], capture_output=True, text=True,
                          timeout=120, preexec_fn=limit_file_size, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith(f"{shard}: cannot write the shard (File too large)")
    assert list(tmp_path.iterdir()) == []  # neither the shard nor its temp file
