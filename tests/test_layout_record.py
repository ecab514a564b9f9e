"""pipeline.video.layout_record: a probed layout stored as JSON comes back identical, and not for a resized file."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from test_video import LOSSY_CODECS, encode, lossless_frames, noise_frames

from pipeline.video.layout_record import layout_from_record, layout_record, tick_runs, ticks_from_runs
from pipeline.video.probe import clear_probe_cache, probe_layout


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
