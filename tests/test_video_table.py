"""The packed tables stage two keeps per video (issue 21): ids and paths as one blob, layouts as flat arrays, and
each video's rows, times and view boxes, read the same as the dict-per-video ways they replace."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.packed import StringTable
from pipeline.shards import TargetStore, partition_videos, shard_name, write_manifest
from pipeline.video.layout_record import layout_from_record, layout_record
from pipeline.video.layout_table import LayoutTable
from pipeline.video.probe import FrameLayout, VideoInfo
from tests.test_shards import VIDEOS, concatenate, video_rows, write_shard


def test_a_string_table_gives_back_every_string():
    strings = ["a", "", "vidéo/ñ.mp4", "x" * 300]
    table = StringTable(strings)
    assert len(table) == 4 and [table[position] for position in range(4)] == strings
    assert len(StringTable([])) == 0


def make_layout(path: Path, frame_count: int, step: int, keyframes: list[int], seekable: bool = True) -> FrameLayout:
    path.write_bytes(b"v" * (100 + frame_count))
    info = VideoInfo(path=str(path), duration=frame_count / 25, fps=25.0, frame_count=frame_count, width=320,
                     height=240, codec="h264")
    ticks = np.arange(frame_count, dtype=np.int64) * step
    ticks[frame_count // 2:] += 7  # a second run of frame times
    return FrameLayout(info=info, frame_times=ticks / 12800, keyframe_indices=np.array(keyframes, dtype=np.int64),
                       tick_seconds=1 / 12800, seekable=seekable)


def test_a_layout_table_rebuilds_each_stored_layout(tmp_path):
    layouts = [make_layout(tmp_path / "a.mp4", 30, 512, [0, 16]), make_layout(tmp_path / "b.mp4", 7, 300, [0], False)]
    records = [layout_record(layouts[0]), None, layout_record(layouts[1]), {"version": 99}]
    table = LayoutTable(records)
    assert [table.has(position) for position in range(4)] == [True, False, True, False]
    for position, name in ((0, "a.mp4"), (2, "b.mp4")):
        path = tmp_path / name
        expected = layout_from_record(path, records[position])
        got = table.layout(position, path)
        assert got.info == expected.info and got.tick_seconds == expected.tick_seconds
        assert got.seekable == expected.seekable and table.size(position) == path.stat().st_size
        np.testing.assert_array_equal(got.frame_times, expected.frame_times)
        np.testing.assert_array_equal(got.keyframe_indices, expected.keyframe_indices)
        assert got.keyframe_indices.dtype == np.int64
    with pytest.raises(KeyError):
        table.layout(1, tmp_path / "a.mp4")


def build(folder: Path, reversed_video: str | None) -> Path:
    paths = []
    for index, video_ids in enumerate(partition_videos(VIDEOS, 3)):
        rows = concatenate([video_rows(video_id, 6, reverse=video_id == reversed_video) for video_id in video_ids])
        paths.append(write_shard(folder / shard_name(index, 3), index, 3, rows))
    write_manifest(folder, config={"frames_per_second": 2.0}, shards=paths)
    return folder


@pytest.mark.parametrize("reversed_video", [None, "video_03"], ids=["one-run-per-video", "a-video-out-of-time-order"])
def test_the_video_table_reads_what_the_row_reads_give(tmp_path, reversed_video):
    store = TargetStore(build(tmp_path / "cache", reversed_video))
    table = store.video_table()
    assert table.contiguous == (reversed_video is None)
    assert store.video_ids() == sorted(VIDEOS) and [table.ids[position] for position in range(len(table))] == sorted(VIDEOS)
    boxes = store.video_view_boxes()
    names = ["fake-classifier/logits", "fake-keypoints/person_present"]
    for position, video_id in enumerate(sorted(VIDEOS)):
        whole = store.rows_for_video(video_id)
        np.testing.assert_array_equal(table.times(position), whole["t_seconds"])
        assert np.all(np.diff(table.times(position)) >= 0)
        for rows in (slice(2, 4), slice(0, 6), np.array([1, 4])):
            read = store.read_video_rows(position, rows, names)
            assert sorted(read) == sorted(names)
            for name in names:
                np.testing.assert_array_equal(read[name], whole[name][rows])
                assert read[name].dtype == np.float32
        per_row = store.view_boxes_for_video(video_id)
        for teacher, video_boxes in boxes.items():
            expected = np.concatenate([per_row[teacher][:, :2].max(axis=0), per_row[teacher][:, 2:].min(axis=0)])
            np.testing.assert_array_equal(video_boxes[position], expected)
    store.close()


def test_a_video_spread_over_two_shards_reads_in_time_order(tmp_path):
    folder = tmp_path / "mixed"
    first, second = video_rows("video_00", 6), video_rows("video_00", 6)
    for key in first:
        first[key], second[key] = first[key][::2], second[key][1::2]
    paths = [write_shard(folder / shard_name(0, 2), 0, 2, concatenate([first, video_rows("video_01", 3)])),
             write_shard(folder / shard_name(1, 2), 1, 2, second)]
    write_manifest(folder, config={"frames_per_second": 2.0}, shards=paths)
    store = TargetStore(folder)
    assert not store.video_table().contiguous and store.video_ids() == ["video_00", "video_01"]
    np.testing.assert_array_equal(store.video_table().times(0), video_rows("video_00", 6)["t_seconds"])
    store.close()
