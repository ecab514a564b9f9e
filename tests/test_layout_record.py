"""pipeline.video.layout_record: a probed layout stored as JSON comes back identical, and not for a resized file."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from test_video import LOSSY_CODECS, encode, lossless_frames, noise_frames

from distinit.pipeline.video.layout_record import layout_from_record, layout_record, tick_runs, ticks_from_runs
from distinit.pipeline.video.probe import clear_probe_cache, probe_layout


@pytest.mark.parametrize("name", ["lossless.mkv", *sorted(LOSSY_CODECS)])
def test_a_stored_layout_is_the_probed_one(tmp_path, name):
    frames = lossless_frames() if name == "lossless.mkv" else noise_frames()
    path = encode(frames, tmp_path / name, ["-c:v", "ffv1"] if name == "lossless.mkv" else LOSSY_CODECS[name])
    probed = probe_layout(path)
    record = json.loads(json.dumps(layout_record(probed)))  # through JSON, as it is stored
    stored = layout_from_record(path, record)
    assert stored.info == probed.info and stored.seekable == probed.seekable
    assert stored.tick_seconds == probed.tick_seconds
    assert np.array_equal(stored.frame_times, probed.frame_times)  # bit for bit: seeks use them
    assert np.array_equal(stored.keyframe_indices, probed.keyframe_indices)
    assert len(record["frame_ticks"]) == 1  # a constant frame rate is one run


def test_a_changed_file_has_no_stored_layout(tmp_path):
    path = encode(lossless_frames(), tmp_path / "clip.mkv", ["-c:v", "ffv1"])
    record = layout_record(probe_layout(path))
    assert layout_from_record(path, record) is not None
    os.utime(path, ns=(10**18, 10**18))
    assert layout_from_record(path, record) is not None  # touched, or copied without its mtime: the same file
    with open(path, "ab") as appended:
        appended.write(b"\0")
    assert layout_from_record(path, record) is None  # another size: probe again
    clear_probe_cache()
    encode(lossless_frames()[:20], path, ["-c:v", "ffv1"])
    assert layout_from_record(path, layout_record(probe_layout(path))).info.frame_count == 20
    assert layout_from_record(tmp_path / "gone.mkv", record) is None
    assert layout_from_record(path, None) is None and layout_from_record(path, {**record, "version": 0}) is None


def test_tick_runs_round_trip_variable_steps():
    ticks = np.array([0, 512, 1024, 1536, 2560, 3072, 3584, 5000, 5001], dtype=np.int64)
    runs = tick_runs(ticks)
    assert runs == [[0, 512, 4], [2560, 512, 3], [5000, 1, 2]]
    assert np.array_equal(ticks_from_runs(runs), ticks)
    assert tick_runs(np.array([7], dtype=np.int64)) == [[7, 0, 1]]
    assert ticks_from_runs([]).shape == (0,)


def test_stage_one_records_the_files_content_hash_and_older_records_still_read(tmp_path):
    """Stage one's decode worker keeps the sha256 of the file's bytes in the layout record (eval matches test
    videos by it); a version-1 record (a prepared folder written before) still gives its layout."""
    import hashlib

    from distinit.extract.decode_worker import decode_video
    from distinit.extract.sampling import SamplingConfig
    from distinit.pipeline.video.layout_record import RECORD_VERSION, record_sha256

    path = encode(lossless_frames(), tmp_path / "clip.mkv", ["-c:v", "ffv1"])
    decoded = decode_video("clip", str(path), SamplingConfig(frames_per_second=2.0), short_side=32, timeout=60)
    assert decoded.error is None and decoded.layout["version"] == RECORD_VERSION == 2
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert decoded.layout["file"] == {"size": path.stat().st_size, "sha256": expected}
    assert record_sha256(json.loads(json.dumps(decoded.layout))) == expected
    plain = layout_record(probe_layout(path))  # prepare's and eval's records: no hash, nothing read twice
    assert "sha256" not in plain["file"] and record_sha256(plain) is None and record_sha256(None) is None
    older = {**plain, "version": 1}
    assert layout_from_record(path, older).info == layout_from_record(path, decoded.layout).info
