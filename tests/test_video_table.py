"""The packed tables stage two keeps per video (issue 21): ids and paths as one blob, layouts as flat arrays, and
each video's rows, times and view boxes, read the same as the dict-per-video ways they replace."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from distinit.pipeline.errors import DistinitError
from distinit.pipeline.packed import StringTable
from distinit.pipeline.shards import TargetStore, partition_videos, shard_name, write_manifest
from distinit.pipeline.video.layout_record import layout_from_record, layout_record
from distinit.pipeline.video.layout_table import LayoutTable
from distinit.pipeline.video.probe import FrameLayout, VideoInfo
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


# ---------------------------------------------------------------- the clip dataset on the packed tables
from tests.test_distill_data import CLIP, GOOD_VIDEOS, dataset, targets  # noqa: E402,F401  (a module fixture)


def test_missing_videos_are_left_out_when_built_and_reported_once(targets, tmp_path, caplog):
    import json
    import logging
    import shutil

    from distinit.distill.data import TargetClipDataset, build_clip_videos, open_targets

    root = Path(json.loads((targets / "manifest.json").read_text())["extra"]["videos_root"])
    copy = tmp_path / "videos"
    shutil.copytree(root, copy)
    (copy / "bravo.mp4").unlink()
    with caplog.at_level(logging.WARNING, logger="distinit.distill.clip_videos"):
        videos = build_clip_videos(open_targets(targets), videos_root=copy)
        sets = [TargetClipDataset(targets, ids, CLIP, train=False, videos=videos)
                for ids in (GOOD_VIDEOS, ["bravo", "charlie"])]
    assert [record.getMessage() for record in caplog.records] == [
        f"1 of 4 videos are left out of distillation: 1 missing (e.g. {copy / 'bravo.mp4'})"]
    assert sets[0].video_ids == ["alpha", "charlie"] and sets[1].video_ids == ["charlie"]
    for index in range(len(sets[0])):
        assert sets[0][index]["video_id"] in ("alpha", "charlie")
    assert sets[0].decode_failures == 0  # never charged to the decode-failure budget
    with pytest.raises(DistinitError, match=r"no videos to make clips from \(all 1 given are missing or unprepared\)"):
        TargetClipDataset(targets, ["bravo"], CLIP, train=False, videos=videos)


def test_a_clip_reads_only_the_outputs_its_heads_learn(targets):
    eval_set = dataset(targets)
    # num_people is a count: no head learns it, so it is not read.
    assert eval_set.read_names == ["fake-imagenet/logits", "coco-keypoints/keypoints", "coco-keypoints/person_present"]
    sample = eval_set[0]
    assert sorted(sample["targets"]) == ["coco-keypoints/heatmaps", "coco-keypoints/person_present", "fake-imagenet/logits"]
    every = dataset(targets, target_outputs=eval_set.store.output_names)[0]
    assert "coco-keypoints/num_people" in every["targets"]
    for key, value in sample["targets"].items():
        assert torch.equal(value, every["targets"][key])


def test_the_training_and_held_out_sets_share_one_table(targets):
    from distinit.distill.config import DistillConfig
    from distinit.pipeline.training.distributed import DistributedContext
    from distinit.distill.train import build_loaders

    config = DistillConfig(targets=str(targets), frames=4, stride=2, short_side=32, crop=24, workers=0, batch_size=2,
                           val_fraction=0.3)
    _, train_loader, val_loader = build_loaders(config, targets, DistributedContext(0, 1, 0, torch.device("cpu")))
    assert train_loader.dataset.videos is val_loader.dataset.videos
    assert sorted(train_loader.dataset.video_ids + val_loader.dataset.video_ids) == sorted([*GOOD_VIDEOS, "broken"])


# ---------------------------------------------------------------- target reads by chunk offset
def test_our_fletcher32_is_hdf5s_and_a_chunk_read_gives_h5pys_rows(tmp_path):
    from distinit.pipeline.shards.chunk_reads import ChunkReader, chunk_table, fletcher32

    folder = build(tmp_path / "cache", None)
    store = TargetStore(folder)
    index = store.video_index()
    assert sorted(index.chunks) == sorted(store.output_names)
    with h5py.File(store.shard_paths[1], "r") as shard:
        dataset = shard["fake-classifier/logits"]
        table = chunk_table([dataset])
        data = store.shard_paths[1].read_bytes()
        for offset, size in zip(table.offsets, table.sizes):
            chunk = data[offset:offset + size]
            assert fletcher32(chunk[:-4]) == int.from_bytes(chunk[-4:], "little")
        reader = ChunkReader([store.shard_paths[1]], {"x": table})
        for start, stop in ((0, 1), (2, 5), (0, dataset.shape[0]), (dataset.shape[0] - 1, dataset.shape[0])):
            np.testing.assert_array_equal(reader.read("x", 0, start, stop), dataset[start:stop])
    assert fletcher32(b"abc") == fletcher32(b"abc\0")  # an odd byte is the high byte of a word
    store.close()


def test_a_flipped_bit_in_a_target_chunk_is_an_error_not_a_value(tmp_path):
    folder = build(tmp_path / "cache", None)
    store = TargetStore(folder)
    table = store.video_index().chunks["fake-classifier/logits"]
    position = store.video_table().positions()["video_00"]
    shard, first = int(store.video_table().shard[position]), int(store.video_table().first[position])
    chunk = int(table.shard_starts[shard]) + first // table.chunk_rows
    with open(store.shard_paths[shard], "r+b") as stream:
        stream.seek(int(table.offsets[chunk]) + 3)
        byte = stream.read(1)
        stream.seek(-1, 1)
        stream.write(bytes([byte[0] ^ 0x10]))
    with pytest.raises(OSError, match="fails its fletcher32 checksum"):
        store.read_video_rows(position, slice(0, 2), ["fake-classifier/logits"])
    store.close()


@pytest.mark.parametrize("rows", [np.zeros((8, 1000), np.float16), np.zeros((7, 80), np.float16),
                                  np.ones((5, 3), np.uint8) * 255, np.arange(30, dtype=np.uint8).reshape(10, 3)],
                         ids=["all-zero", "zero-padded-last-chunk", "sums-of-65535", "odd-bytes-per-chunk"])
def test_chunk_reads_check_what_hdf5_stored_for_any_chunk(tmp_path, rows):
    from distinit.pipeline.shards.chunk_reads import ChunkReader, chunk_table

    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("x", data=rows, chunks=(4, *rows.shape[1:]), fletcher32=True)
    with h5py.File(path, "r") as handle:
        table = chunk_table([handle["x"]])
    reader = ChunkReader([path], {"x": table})
    np.testing.assert_array_equal(reader.read("x", 0, 0, len(rows)), rows)  # every chunk's checksum checked
    assert reader.read("x", 0, 3, 3).shape == (0, *rows.shape[1:])
    reader.close()
