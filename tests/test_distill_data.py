"""The targets clip dataset: window placement, aggregation, samples, workers, decode failures, clip cache, flow."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from distinit.distill import clip_cache, data
from click.testing import CliRunner

from distinit.distill.data import TargetClipDataset, open_targets, split_videos
from distinit.distill.keypoint_heatmaps import keypoint_targets, render_window
from distinit.distill.shuffled_targets import donor_rows_in_window, target_donors
from distinit.distill.windows import (
    aggregate_targets, eval_window_start, frames_in_window, heatmap_flags, last_start, teacher_frame_indices,
    train_window_start,
)
from distinit.extract.teachers.base import center_crop_view_box
from distinit.extract.teachers.coco_classes import COCO_KEYPOINT_NAMES
from distinit.pipeline.cli import main
from distinit.pipeline.clips import normalisation, views
from distinit.pipeline.clips.sampler import EpochIndex, ResumableSampler
from distinit.pipeline.clips.spec import ClipSpec
from distinit.pipeline.errors import ConfigError, DistinitError
from distinit.pipeline.shards import ShardError, ShardWriter, shard_name, write_manifest
from distinit.pipeline.video import ffmpeg_binary, read_clip

FPS, SECONDS, WIDTH, HEIGHT = 10, 2, 64, 48
TEACHER_TIMES = (0.25, 0.75, 1.25, 1.75)  # frames 2, 7, 12, 17 at 10 fps
GOOD_VIDEOS = ("alpha", "bravo", "charlie")
CLASSIFIER = {"name": "fake-imagenet", "outputs": [{"name": "logits", "shape": [10], "dtype": "float32", "kind": "logits"}]}
KEYPOINTS = {
    "name": "coco-keypoints",
    "outputs": [
        {"name": "keypoints", "shape": [17, 3], "dtype": "float16", "kind": "keypoints", "class_names": list(COCO_KEYPOINT_NAMES),
         "attributes": {"heatmap_grid": 4, "heatmap_sigma_cells": 1.0}},
        {"name": "person_present", "shape": [], "dtype": "uint8", "kind": "flag"},
        {"name": "num_people", "shape": [], "dtype": "int16", "kind": "count"},
    ],
}
ATTRIBUTES = {"dataset": "tiny", "stage_key": "00000000feedbeef", "code_version": "test", "sampling": {"frames_per_second": 2.0}}
# What a classifier's centre crop (224 of short side 256) saw of these 4:3 videos, decoded at 342 x 256 for it.
CLASSIFIER_VIEW = center_crop_view_box(256, 342, 256, 224)
CLIP = ClipSpec(frames=4, stride=2, short_side=32, crop=24)
FLOW_CLIP = ClipSpec(frames=3, stride=2, short_side=32, crop=24, modality="flow")


def write_video(path: Path, pattern: str) -> None:
    command = [ffmpeg_binary(), "-v", "error", "-y", "-f", "lavfi", "-i", f"{pattern}=size={WIDTH}x{HEIGHT}:rate={FPS}",
               "-t", str(SECONDS), "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)]
    subprocess.run(command, check=True, capture_output=True, timeout=60)


def video_rows(video_id: str, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    count = len(TEACHER_TIMES)
    # (x / width, y / height, confidence): mostly inside the centre crop, some keypoints outside it.
    keypoints = np.concatenate([rng.uniform(0.05, 0.95, (count, 17, 2)), rng.uniform(0.2, 1, (count, 17, 1))], axis=2)
    present = np.array([1, 0, 1, 1], dtype=np.uint8)
    keypoints[present == 0] = 0.0
    return {
        "video_id": [video_id] * count,
        "t_seconds": np.array(TEACHER_TIMES),
        "frame_index": np.array([int(t * FPS) for t in TEACHER_TIMES]),
        "fake-imagenet/logits": rng.normal(0, 2, (count, 10)).astype(np.float32),
        "coco-keypoints/keypoints": keypoints.astype(np.float32),
        "coco-keypoints/person_present": present,
        "coco-keypoints/num_people": np.array([1, 0, 2, 3], dtype=np.int16),
        "fake-imagenet/view_box": np.tile(np.float32(CLASSIFIER_VIEW), (count, 1)),
        "coco-keypoints/view_box": np.tile(np.float32((0, 0, 1, 1)), (count, 1)),
    }


@pytest.fixture(scope="module")
def targets(tmp_path_factory) -> Path:
    """A finished target cache over three tiny real videos and one corrupt file ('broken')."""
    root = tmp_path_factory.mktemp("videos")
    for video_id, pattern in zip(GOOD_VIDEOS, ("testsrc", "testsrc2", "smptebars")):
        write_video(root / f"{video_id}.mp4", pattern)
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 20)
    folder = tmp_path_factory.mktemp("targets")
    every_video = (*GOOD_VIDEOS, "broken")
    path = folder / shard_name(0, 1)
    with ShardWriter(path, teachers=[CLASSIFIER, KEYPOINTS], shard_index=0, shard_count=1, attributes=ATTRIBUTES) as writer:
        for seed, video_id in enumerate(every_video):
            writer.append(video_rows(video_id, seed))
    lines = [json.dumps({"id": video_id, "path": f"{video_id}.mp4"}) for video_id in every_video]
    (folder / "videos.jsonl").write_text("\n".join(lines) + "\n")
    write_manifest(folder, config={}, shards=[path], extra={"videos_manifest": "videos.jsonl", "videos_root": str(root)})
    return folder


def dataset(targets, video_ids=GOOD_VIDEOS, clip=CLIP, **options) -> TargetClipDataset:
    return TargetClipDataset(targets, list(video_ids), clip, **{"train": False, **options})


def assert_samples_equal(first: dict, second: dict) -> None:
    assert first["video_id"] == second["video_id"] and first["clip_start"] == second["clip_start"]
    assert first["index"] == second["index"] and first["num_teacher_frames"] == second["num_teacher_frames"]
    assert torch.equal(first["video"], second["video"])
    assert first["targets"].keys() == second["targets"].keys()
    for key in first["targets"]:
        assert torch.equal(first["targets"][key], second["targets"][key]), key


# ---------------------------------------------------------------------- window placement (pure)
def test_train_windows_hold_a_teacher_frame_on_the_grid_inside_the_video():
    rng = np.random.default_rng(0)
    for _ in range(300):
        frame_count = int(rng.integers(1, 120))
        stride = int(rng.integers(1, 4))
        span = (int(rng.integers(2, 9)) - 1) * stride
        teacher_frames = np.sort(rng.choice(frame_count, size=min(frame_count, int(rng.integers(1, 6))), replace=False))
        start = train_window_start(teacher_frames, frame_count, span, stride, rng)
        assert start % stride == 0 and 0 <= start <= last_start(frame_count, span, stride)
        assert frames_in_window(teacher_frames, start, span).any()
        # Past the end by less than one stride at most (the decoder repeats the last frame there).
        assert start + span <= max(frame_count - 1 + stride - 1, span)


def test_train_windows_spread_and_eval_windows_centre():
    teacher_frames = np.array([10, 30, 50])
    rng = np.random.default_rng(1)
    starts = {train_window_start(teacher_frames, 100, 14, 2, rng) for _ in range(400)}
    assert len(starts) > 15  # many different starts around the three teacher frames
    assert eval_window_start(teacher_frames, 100, 14, 2) == 30 - 7 - 1  # centred, on the grid (23 -> 22 or 24)
    assert eval_window_start(teacher_frames, 100, 14, 2) == eval_window_start(teacher_frames, 100, 14, 2)
    # Several eval clips per video use different teacher frames; a window near the end is clamped back.
    assert [eval_window_start(teacher_frames, 100, 14, 2, clip, 3) for clip in range(3)] == [2, 22, 42]
    assert eval_window_start(np.array([99]), 100, 14, 2) == last_start(100, 14, 2) == 86
    # A video shorter than the clip starts at 0.
    assert eval_window_start(np.array([3]), 5, 14, 2) == 0


def test_teacher_frame_indices_follow_the_decoder_rule():
    indices = teacher_frame_indices(np.array([0.0, 0.25, 0.3, 1.99, 5.0]), 10.0, 20)
    assert indices.tolist() == [0, 2, 3, 19, 19]


# ---------------------------------------------------------------------- aggregation (pure)
def hand_made_rows() -> tuple[dict, dict]:
    map_a, map_b = np.full((2, 2, 2), 0.25, np.float32), np.zeros((2, 2, 2), np.float32)
    map_b[:, 0, 1] = 1.0
    rows = {
        "t/logits": np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 9.0]], np.float32),
        "k/heatmaps": np.stack([map_a, np.zeros_like(map_a), map_b]),
        "k/present": np.array([1, 0, 1], np.float32),
        "k/count": np.array([1, 2, 6], np.float32),
    }
    kinds = {"t/logits": "logits", "k/heatmaps": "heatmaps", "k/present": "flag", "k/count": "count"}
    return rows, kinds


def test_mean_aggregation_exact_values():
    rows, kinds = hand_made_rows()
    masks = heatmap_flags([{"name": "k", "outputs": [{"name": "heatmaps", "kind": "heatmaps"}, {"name": "present", "kind": "flag"},
                                                     {"name": "count", "kind": "count"}]}])
    assert masks == {"k/heatmaps": "k/present"}
    targets = aggregate_targets(rows, kinds, "mean", heatmap_masks=masks)
    # Logits mix as probabilities (see test_window_target_is_probability_mixture).
    np.testing.assert_allclose(softmax(targets["t/logits"]), softmax(rows["t/logits"]).mean(axis=0), rtol=1e-5)
    assert targets["k/present"] == 1.0 and targets["k/count"] == 3.0
    # Heatmaps average only frames with a person: (a + b) / 2, still a distribution per keypoint.
    np.testing.assert_allclose(targets["k/heatmaps"], (rows["k/heatmaps"][0] + rows["k/heatmaps"][2]) / 2)
    np.testing.assert_allclose(targets["k/heatmaps"].sum(axis=(1, 2)), [1.0, 1.0])
    nobody = {key: value[1:2] for key, value in rows.items()}
    empty = aggregate_targets(nobody, kinds, "mean", heatmap_masks=masks)
    assert empty["k/present"] == 0.0 and not empty["k/heatmaps"].any()
    # Without a flag, heatmaps are a plain mean.
    np.testing.assert_allclose(aggregate_targets(rows, kinds, "mean")["k/heatmaps"], rows["k/heatmaps"].mean(axis=0))


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_window_target_is_probability_mixture(temperature):
    # One frame at p(dog) = 0.96 over 1000 classes and one flat frame: the window's target must be their
    # probability mixture (p(dog) = 0.48 at T = 1), not softmax of the mean logits (p(dog) = 0.13).
    classes, dog = 1000, 207
    confident = np.zeros(classes)
    confident[dog] = np.log(0.96 * (classes - 1) / 0.04)
    rows = {"t/logits": np.stack([confident * temperature, np.zeros(classes)]).astype(np.float32)}
    target = aggregate_targets(rows, {"t/logits": "logits"}, "mean", temperature=temperature)["t/logits"]
    mixture = softmax(target.astype(np.float64) / temperature)
    assert mixture[dog] == pytest.approx(0.48 + 0.5 / classes, abs=1e-5)
    naive = softmax(rows["t/logits"].mean(axis=0) / temperature)[dog]
    assert naive == pytest.approx(0.13, abs=0.01) and abs(mixture[dog] - naive) > 0.3
    # What the loss sees, through its own softmax at T, is the mean of the frames' distributions.
    teachers = softmax(rows["t/logits"].astype(np.float64) / temperature).mean(axis=0)
    np.testing.assert_allclose(mixture, teachers, rtol=1e-5, atol=1e-9)
    # A single frame's target is its own distribution; extreme logits stay finite.
    single = aggregate_targets({"t/logits": rows["t/logits"][:1] * 50}, {"t/logits": "logits"}, "mean",
                               temperature=temperature)["t/logits"]
    assert np.isfinite(single).all() and single.argmax() == dog


def test_random_aggregation_takes_one_whole_frame():
    rows, kinds = hand_made_rows()
    chosen = set()
    for seed in range(40):
        targets = aggregate_targets(rows, kinds, "random", np.random.default_rng(seed))
        frame = int(np.argmax(rows["t/logits"][:, 0] == targets["t/logits"][0]))
        for key in rows:  # every output from the same frame
            np.testing.assert_array_equal(targets[key], rows[key][frame])
        chosen.add(frame)
    assert chosen == {0, 1, 2}
    with pytest.raises(ConfigError):
        aggregate_targets(rows, kinds, "median")


# ---------------------------------------------------------------------- store and split
def test_split_is_deterministic_disjoint_and_holds_one_out():
    ids = [f"video_{index:03d}" for index in range(200)]
    train_ids, val_ids = split_videos(ids, 0.1, seed=3)
    assert (train_ids, val_ids) == split_videos(list(reversed(ids)), 0.1, seed=3)
    assert set(train_ids) | set(val_ids) == set(ids) and not set(train_ids) & set(val_ids)
    assert 8 <= len(val_ids) <= 35
    assert split_videos(ids, 0.1, seed=4)[1] != val_ids
    # Adding videos never moves an existing one across.
    _, more_val = split_videos(ids + ["extra_1", "extra_2"], 0.1, seed=3)
    assert set(val_ids) <= set(more_val)
    assert [len(side) for side in split_videos(["a", "b"], 0.1)] == [1, 1]
    assert [len(side) for side in split_videos(["a", "b"], 0.9)] == [1, 1]
    assert split_videos(["a", "b"], 0.0) == (["a", "b"], [])
    assert split_videos(["a"], 0.5) == (["a"], [])


def test_open_targets_refuses_a_broken_cache(targets, tmp_path):
    assert len(open_targets(targets)) == 16
    copy = tmp_path / "copy"
    shutil.copytree(targets, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["shards"][0]["rows"] = 15
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match="shard-00000-of-00001.h5: 16 rows"):
        open_targets(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(ShardError, match="no manifest"):
        open_targets(copy)


def test_unknown_videos_and_moved_videos_are_reported(targets, tmp_path):
    with pytest.raises(DistinitError, match="no target rows"):
        dataset(targets, ["alpha", "zulu"])
    # Counted over the whole cache (its 4 videos), whose table both sets share, not the 3 this set takes.
    with pytest.raises(DistinitError, match="none of the 4 videos exist"):
        dataset(targets, videos_root=tmp_path)


# ---------------------------------------------------------------------- samples
def test_eval_sample_layout_and_normalisation(targets):
    eval_set = dataset(targets)
    assert len(eval_set) == 3 and len(dataset(targets, clips_per_video=2)) == 6
    assert [teacher["name"] for teacher in eval_set.teachers] == ["fake-imagenet", "coco-keypoints"]
    sample = eval_set[1]
    assert sample["video"].shape == (4, 24, 24, 3) and sample["video"].dtype == torch.uint8  # normalised on the device
    assert sample["flipped"] is False
    assert {key: tuple(value.shape) for key, value in sample["targets"].items()} == {
        "fake-imagenet/logits": (10,), "coco-keypoints/heatmaps": (17, 4, 4),
        "coco-keypoints/person_present": (),  # num_people, a count, has no head: not read (target_outputs reads it)
    }
    assert all(value.dtype == torch.float32 for value in sample["targets"].values())
    assert sample["video_id"] == "bravo" and sample["index"] == 1
    # Centred on the middle teacher frame (frame 12 of 20): start 12 - 3 = 9 -> 8 or 10 on the stride grid.
    assert sample["clip_start"] == pytest.approx(0.8) and sample["num_teacher_frames"] == 1
    rows = video_rows("bravo", 1)
    stored = rows["fake-imagenet/logits"][2].astype(np.float16)  # the cache keeps soft targets as float16
    np.testing.assert_array_equal(sample["targets"]["fake-imagenet/logits"].numpy(), stored.astype(np.float32))
    # The tensor is the decoded, centre-cropped clip's bytes; normalised on the device, the host path's floats.
    frames = read_clip(eval_set.path_of("bravo"), sample["clip_start"], 4, stride=2, short_side=32)
    top, left = (32 - 24) // 2, (42 - 24) // 2
    cropped = frames[:, top : top + 24, left : left + 24]
    assert torch.equal(sample["video"], torch.from_numpy(cropped))  # (T, H, W, 3) as decoded
    normalised = views.video_to_device(sample["video"][None], torch.device("cpu"), normalisation.VIDEO_NORMALISATION)[0]
    assert torch.equal(normalised, normalisation.rgb_to_tensor(cropped))


def test_eval_is_deterministic_and_train_varies_with_epoch_and_seed(targets):
    eval_set = dataset(targets)
    first = [eval_set[index] for index in range(3)]
    eval_set.set_epoch(5)
    for index in range(3):
        assert_samples_equal(first[index], eval_set[index])
    train_set = dataset(targets, train=True, clips_per_video=4, seed=7)
    epoch_zero = [(train_set[index]["clip_start"], train_set[index]["video"].sum().item()) for index in range(12)]
    assert all(train_set[index]["num_teacher_frames"] >= 1 for index in range(12))
    train_set.set_epoch(1)
    epoch_one = [(train_set[index]["clip_start"], train_set[index]["video"].sum().item()) for index in range(12)]
    assert epoch_zero != epoch_one
    same_seed = dataset(targets, train=True, clips_per_video=4, seed=7)
    same_seed.set_epoch(1)
    assert_samples_equal(same_seed[5], train_set[5])


def test_flip_mirrors_video_heatmaps_and_swaps_keypoints(targets, monkeypatch):
    train_set = dataset(targets, train=True)
    monkeypatch.setattr(views, "FLIP_PROBABILITY", 0.0)
    plain = train_set[0]
    monkeypatch.setattr(views, "FLIP_PROBABILITY", 1.0)
    flipped = train_set[0]
    assert plain["clip_start"] == flipped["clip_start"]  # same window and crop, only the flip differs
    assert not plain["flipped"] and flipped["flipped"] and torch.equal(flipped["video"], plain["video"])
    batch = torch.utils.data.default_collate([plain, flipped])  # the pixels are mirrored on the device
    on_device = views.video_to_device(batch["video"], torch.device("cpu"), normalisation.VIDEO_NORMALISATION,
                                        flipped=batch["flipped"])
    assert torch.equal(on_device[1], on_device[0].flip(-1))
    left, right = COCO_KEYPOINT_NAMES.index("left_wrist"), COCO_KEYPOINT_NAMES.index("right_wrist")
    plain_maps, flipped_maps = plain["targets"]["coco-keypoints/heatmaps"], flipped["targets"]["coco-keypoints/heatmaps"]
    assert torch.equal(flipped_maps[right], plain_maps[left].flip(-1))
    assert torch.equal(flipped_maps[left], plain_maps[right].flip(-1))
    for key in ("fake-imagenet/logits", "coco-keypoints/person_present"):
        assert torch.equal(flipped["targets"][key], plain["targets"][key])


def test_workers_give_the_same_batches_as_the_main_process(targets):
    eval_set = dataset(targets, clips_per_video=2)
    batches = {}
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(eval_set, batch_size=2, num_workers=workers)
        batches[workers] = list(loader)
    assert len(batches[0]) == len(batches[2]) == 3
    for main_batch, worker_batch in zip(batches[0], batches[2]):
        assert main_batch["video_id"] == worker_batch["video_id"]
        assert torch.equal(main_batch["video"], worker_batch["video"])
        assert torch.equal(main_batch["clip_start"], worker_batch["clip_start"])
        for key in main_batch["targets"]:
            assert torch.equal(main_batch["targets"][key], worker_batch["targets"][key])


def _epochs_through_a_loader(train_set, sampler, workers: int, persistent: bool, epochs: int) -> list[list[dict]]:
    """Each epoch's samples (batches of 2) as the trainer draws them: only the sampler is told the epoch."""
    loader = torch.utils.data.DataLoader(train_set, batch_size=2, sampler=sampler, num_workers=workers,
                                         persistent_workers=persistent)
    drawn = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        drawn.append(list(loader))
    sampler.set_epoch(1, start_index=2)  # a run resumed after epoch 1's first batch
    drawn.append(list(loader))
    return drawn


def assert_batches_equal(first: list[dict], second: list[dict]) -> None:
    assert len(first) == len(second)
    for one, other in zip(first, second):
        assert one["video_id"] == other["video_id"] and torch.equal(one["index"], other["index"])
        assert torch.equal(one["video"], other["video"]) and torch.equal(one["clip_start"], other["clip_start"])
        for key in one["targets"]:
            assert torch.equal(one["targets"][key], other["targets"][key]), key


def test_persistent_workers_draw_every_epoch_as_one_process_does(targets):
    """The epoch travels with each index (pipeline.clips.sampler), so workers kept from one epoch to the next draw that
    epoch's clips: 0 workers, 2 fresh workers each epoch and 2 persistent ones give the same samples."""
    train_set = dataset(targets, train=True, clips_per_video=2, seed=11)
    runs = {(workers, persistent): _epochs_through_a_loader(
                train_set, ResumableSampler(len(train_set), shuffle=True, seed=11), workers, persistent, epochs=3)
            for workers, persistent in ((0, False), (2, False), (2, True))}
    reference = runs[(0, False)]
    for drawn in runs.values():
        for epoch_batches, reference_batches in zip(drawn, reference):
            assert_batches_equal(epoch_batches, reference_batches)
    def clips_by_index(batches: list[dict]) -> dict[int, tuple]:
        return {int(index): (float(start), int(video.sum())) for batch in batches
                for index, start, video in zip(batch["index"], batch["clip_start"], batch["video"])}

    by_epoch = [clips_by_index(batches) for batches in reference[:3]]
    assert by_epoch[0] != by_epoch[1] and by_epoch[1] != by_epoch[2]  # each epoch draws its own clips...
    assert train_set.epoch == 0  # ...though nobody told the dataset: a key carries its epoch
    train_set.set_epoch(2)
    plain_key = train_set[4]  # a plain index takes the dataset's epoch
    train_set.set_epoch(0)
    assert_samples_equal(train_set[EpochIndex(4, 2)], plain_key)
    # Resumed mid-epoch: the rest of epoch 1, as it was.
    assert_batches_equal(reference[3], reference[1][1:])


def test_dataset_survives_a_pickle_as_spawned_workers_receive_it(targets):
    eval_set = dataset(targets)
    eval_set[0]  # opens HDF5 handles and probes in this process
    copy = pickle.loads(pickle.dumps(eval_set))
    assert_samples_equal(copy[2], eval_set[2])


def test_a_corrupt_video_is_skipped_counted_and_bounded(targets):
    with_broken = dataset(targets, ["alpha", "broken", "charlie"])
    sample = with_broken[1]
    assert sample["video_id"] == "charlie" and sample["index"] == 2  # the next sample stands in
    assert with_broken.decode_failures == 1 and with_broken.failed_videos == {"broken"}
    with_broken[1]
    assert with_broken.decode_failures == 1  # a known-bad video is not decoded again
    strict = dataset(targets, ["alpha", "broken"], max_decode_failures=0)
    with pytest.raises(DistinitError, match=r"broken\.mp4: more than 0 videos failed"):
        strict[1]


# ---------------------------------------------------------------------- clip cache
@pytest.mark.parametrize("clip", [CLIP, FLOW_CLIP], ids=["rgb", "flow"])
def test_cached_clips_equal_decoded_clips_and_skip_the_decoder(targets, tmp_path, monkeypatch, clip):
    options = {"train": True, "clips_per_video": 2, "seed": 3, "clip": clip}
    decoded = dataset(targets, **options)
    cached = dataset(targets, cache_clips=tmp_path / "cache", **options)
    for index in range(len(decoded)):
        assert_samples_equal(decoded[index], cached[index])
    entries = sorted(path.name for path in (tmp_path / "cache").iterdir())
    assert len(entries) == 3 and all(name.startswith(GOOD_VIDEOS) for name in entries)

    decoded.set_epoch(1)
    expected = [decoded[index] for index in range(len(decoded))]

    def refuse(*args, **kwargs):
        raise AssertionError("the decoder ran on a cached video")

    for module, prober in ((data, "probe_layout"), (clip_cache, "probe")):
        monkeypatch.setattr(module, "read_clip", refuse)
        monkeypatch.setattr(module, prober, refuse)
    fresh = dataset(targets, cache_clips=tmp_path / "cache", **options)  # e.g. a new worker, next epoch
    fresh.set_epoch(1)
    for index, sample in enumerate(expected):
        assert_samples_equal(sample, fresh[index])


def test_cache_lock_held_by_another_worker_falls_back_to_decoding(targets, tmp_path):
    cache = clip_cache.ClipCache(tmp_path / "cache", short_side=32, grid=2)
    path = dataset(targets).path_of("alpha")
    folder = cache.entry_folder("alpha", path)
    lock = folder.parent / f".{folder.name}.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text("12345")
    assert cache.get("alpha", path) is None  # someone else is building it
    cached_set = dataset(targets, cache_clips=tmp_path / "cache")
    assert_samples_equal(cached_set[0], dataset(targets)[0])
    stale = lock.stat().st_mtime - clip_cache.STALE_LOCK_SECONDS - 10
    os.utime(lock, (stale, stale))
    entry = cache.get("alpha", path)
    assert entry is not None and entry.frame_count == FPS * SECONDS and not lock.exists()
    assert np.load(entry.folder / clip_cache.FRAMES_FILE).shape == (10, 32, 42, 3)


# ---------------------------------------------------------------------- flow
def test_flow_samples_and_flow_flip(targets, monkeypatch):
    flow_set = dataset(targets, clip=FLOW_CLIP, train=True)
    monkeypatch.setattr(views, "FLIP_PROBABILITY", 0.0)
    plain = flow_set[2]
    assert plain["video"].shape == (2, 3, 24, 24) and plain["video"].dtype == torch.float32
    assert torch.isfinite(plain["video"]).all() and plain["video"].abs().max() <= 1.0
    assert plain["video"].abs().max() > 0  # the test pattern moves
    monkeypatch.setattr(views, "FLIP_PROBABILITY", 1.0)
    flipped = flow_set[2]
    assert torch.equal(flipped["video"][0], -plain["video"][0].flip(-1))
    assert torch.equal(flipped["video"][1], plain["video"][1].flip(-1))
    assert dataset(targets, clip=FLOW_CLIP, flow_method="tvl1").clip.flow_method == "tvl1"


# ---------------------------------------------------------------- keypoints drawn over each sample's crop
def as_stored(values: np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=np.float16).astype(np.float32)


def expected_pose_targets(video_id: str, seed: int, clip_start: float, top: int, left: int) -> dict:
    """The pose targets of a window of `video_id`, drawn by hand from its stored rows over the crop (top, left)
    of the 42 x 32 frame (64 x 48 at short side 32)."""
    rows = video_rows(video_id, seed)
    start = round(clip_start * FPS)
    inside = frames_in_window(teacher_frame_indices(rows["t_seconds"], FPS, FPS * SECONDS), start, CLIP.span_frames)
    window = {"coco-keypoints/keypoints": as_stored(rows["coco-keypoints/keypoints"])[inside],
              "coco-keypoints/person_present": rows["coco-keypoints/person_present"][inside].astype(np.float32)}
    drawn = render_window(window, keypoint_targets([KEYPOINTS]), 32, 42, top, left, CLIP.crop)
    kinds = {"coco-keypoints/heatmaps": "heatmaps", "coco-keypoints/person_present": "flag"}
    return aggregate_targets(drawn, kinds, "mean", heatmap_masks={"coco-keypoints/heatmaps": "coco-keypoints/person_present"})


def test_sample_heatmaps_are_drawn_over_its_own_crop(targets, monkeypatch):
    # charlie, centre crop of the 42 x 32 frame (and of the classifier's view, x 7.25..34.75, y 2..30): top 4, left 9
    sample = dataset(targets)[2]
    expected = expected_pose_targets("charlie", 2, sample["clip_start"], 4, 9)
    for key, value in expected.items():
        np.testing.assert_array_equal(sample["targets"][key].numpy(), value)
    assert sample["targets"]["coco-keypoints/heatmaps"].sum() > 0
    # Training: the same window under two different crops gets two different targets, each its crop's own.
    monkeypatch.setattr(views, "FLIP_PROBABILITY", 0.0)
    train_set = dataset(targets, train=True)
    boxes = iter([(0, 0), (8, 18)])
    monkeypatch.setattr(views, "crop_box", lambda height, width, crop, rng, **view: next(boxes))
    first, second = train_set[2], train_set[2]
    assert first["clip_start"] == second["clip_start"]
    for sample, (top, left) in ((first, (0, 0)), (second, (8, 18))):
        expected = expected_pose_targets("charlie", 2, sample["clip_start"], top, left)
        np.testing.assert_array_equal(sample["targets"]["coco-keypoints/heatmaps"].numpy(), expected["coco-keypoints/heatmaps"])
    assert not torch.equal(first["targets"]["coco-keypoints/heatmaps"], second["targets"]["coco-keypoints/heatmaps"])


def test_training_crops_stay_in_the_classifiers_view_and_heatmaps_follow_them(targets, monkeypatch):
    # The 42 x 32 frames: the classifier saw x 7.25..34.75, y 2..30, so 24 px crops start at left 8..10, top 2..6;
    # the pose teacher saw the whole frame and does not narrow that.
    monkeypatch.setattr(views, "FLIP_PROBABILITY", 0.0)
    drawn, crop_frames = [], views.crop_frames
    monkeypatch.setattr(views, "crop_frames", lambda frames, top, left, crop: drawn.append((top, left))
                        or crop_frames(frames, top, left, crop))
    train_set = dataset(targets, train=True, clips_per_video=4, crop_in_teacher_view=1.0)
    for epoch in range(3):
        train_set.set_epoch(epoch)
        for index in range(len(train_set)):
            sample = train_set[index]
            top, left = drawn[-1]
            assert 2 <= top <= 6 and 8 <= left <= 10 and sample["crop_in_view"] == 1.0
            seed = GOOD_VIDEOS.index(sample["video_id"])
            expected = expected_pose_targets(sample["video_id"], seed, sample["clip_start"], top, left)
            np.testing.assert_array_equal(sample["targets"]["coco-keypoints/heatmaps"].numpy(),
                                          expected["coco-keypoints/heatmaps"])
    assert len(set(drawn)) > 8  # random inside the view
    anywhere = dataset(targets, train=True, clips_per_video=4, crop_in_teacher_view=0.0)
    fractions = [anywhere[index]["crop_in_view"] for index in range(len(anywhere))]
    assert min(fractions) < 1.0  # anywhere: some crops reach past the view
    with pytest.raises(ConfigError, match=r"crop_in_teacher_view=1.5 must lie in \[0, 1\]"):
        dataset(targets, crop_in_teacher_view=1.5)


def test_a_cache_in_the_old_format_stops_distill_with_one_line(targets, tmp_path):
    copy = tmp_path / "old"
    shutil.copytree(targets, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format_version"] = 2
    (copy / "manifest.json").write_text(json.dumps(manifest))
    line = ("shard format 2, this distinit reads 5 (teacher outputs are stored uncompressed in small chunks, so stage "
            "two reads a clip's rows at decode speed); re-run `make extract DATA=tiny`")
    with pytest.raises(ShardError, match=re.escape(line)):
        dataset(copy)
    result = CliRunner().invoke(main, ["distill", "--targets", str(copy), "--device", "cpu", "--out", str(tmp_path / "runs")])
    assert result.exit_code == 1 and result.exception is not None and isinstance(result.exception, SystemExit)
    assert line in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- the shuffled-targets control
def test_shuffled_targets_come_from_another_video_and_keep_the_marginal(targets):
    shuffled = dataset(targets, clips_per_video=4, shuffle_targets=True)
    stored_logits = {video_id: as_stored(video_rows(video_id, seed)["fake-imagenet/logits"]) for seed, video_id in enumerate(GOOD_VIDEOS)}
    donors, used = {}, []
    for index in range(len(shuffled)):
        sample = shuffled[index]
        video_id, donor = sample["video_id"], sample["target_video_id"]
        assert donor in GOOD_VIDEOS and donor != video_id
        assert donors.setdefault(video_id, donor) == donor  # one donor per video
        assert sample["num_teacher_frames"] == 1  # each eval window holds one teacher time
        logits = sample["targets"]["fake-imagenet/logits"].numpy()
        rows = [row for row in range(len(TEACHER_TIMES)) if np.array_equal(stored_logits[donor][row], logits)]
        assert len(rows) == 1  # exactly one of the donor's rows...
        assert not any(np.array_equal(own, logits) for own in stored_logits[video_id])  # ...never its own
        used.append((donor, rows[0]))
    # Every row of every video is used exactly once: the same targets, dealt to other clips.
    assert sorted(used) == sorted((video_id, row) for video_id in GOOD_VIDEOS for row in range(len(TEACHER_TIMES)))
    assert sorted(donors.values()) == sorted(GOOD_VIDEOS)
    # The clips themselves are the videos' own.
    assert torch.equal(shuffled[1]["video"], dataset(targets, clips_per_video=4)[1]["video"])


def test_shuffled_targets_are_fixed_across_epochs_workers_and_copies(targets):
    train_set = dataset(targets, train=True, clips_per_video=2, seed=5, shuffle_targets=True)
    donors = {train_set[index]["video_id"]: train_set[index]["target_video_id"] for index in range(len(train_set))}
    train_set.set_epoch(3)
    assert {train_set[index]["video_id"]: train_set[index]["target_video_id"] for index in range(len(train_set))} == donors
    assert pickle.loads(pickle.dumps(train_set)).donor_ids == train_set.donor_ids == donors
    batches = {}
    for workers in (0, 2):
        batches[workers] = list(torch.utils.data.DataLoader(train_set, batch_size=3, num_workers=workers))
    for main_batch, worker_batch in zip(batches[0], batches[2]):
        assert main_batch["target_video_id"] == worker_batch["target_video_id"]
        for key in main_batch["targets"]:
            assert torch.equal(main_batch["targets"][key], worker_batch["targets"][key])
    assert dataset(targets, train=True, seed=5, shuffle_targets=True).donor_ids == donors


def test_donors_are_a_seeded_derangement():
    videos = [f"video_{index:02d}" for index in range(50)]
    donors = target_donors(videos, 0, videos)
    assert sorted(donors) == videos and sorted(donors.values()) == videos  # a permutation...
    assert all(donor != video_id for video_id, donor in donors.items())  # ...with no fixed point
    assert target_donors(list(reversed(videos)), 0, videos) == donors
    assert target_donors(videos, 1, videos) != donors
    lone = target_donors(["video_07"], 0, videos)  # a held-out side of one video borrows from the others
    assert lone == target_donors(["video_07"], 0, videos) and lone["video_07"] != "video_07"
    with pytest.raises(ConfigError, match="at least two videos"):
        target_donors(["video_07"], 0, ["video_07"])


def test_donor_rows_fall_in_the_same_window_or_nearest_its_relative_position():
    own_times = np.array([0.25, 0.75, 1.25, 1.75])
    # Window frames 4..10 at 10 fps: 0.4 s .. 1.0 s.
    assert donor_rows_in_window(np.array([0.1, 0.5, 0.9, 1.5]), own_times, 10.0, 4, 6).tolist() == [False, True, True, False]
    # A shorter donor: the window at 1.4..2.0 s (centre 1.7 s, 97% of the way from 0.25 to 1.75 s) takes
    # the donor row nearest 97% of the way through the donor's rows.
    assert donor_rows_in_window(np.array([0.25, 0.5, 0.75]), own_times, 10.0, 14, 6).tolist() == [False, False, True]
    assert donor_rows_in_window(np.array([3.0, 5.0, 9.0]), own_times, 10.0, 0, 6).tolist() == [True, False, False]


def test_the_control_is_part_of_the_run_key_and_shuffles_both_loaders(targets):
    from distinit.distill.config import DistillConfig
    from distinit.pipeline.training.distributed import DistributedContext
    from distinit.distill.train import build_loaders, run_key

    config = DistillConfig(targets=str(targets), shuffle_targets=True, frames=4, stride=2, short_side=32, crop=24,
                           workers=0, batch_size=2, val_fraction=0.3)
    assert config.key_fields()["shuffle_targets"] is True
    assert run_key(config, "targets") != run_key(dataclasses.replace(config, shuffle_targets=False), "targets")
    _, train_loader, val_loader = build_loaders(config, targets, DistributedContext(0, 1, 0, torch.device("cpu")))
    # The held-out loss is measured on shuffled targets too (one held-out video borrows from the others).
    for loader in (train_loader, val_loader):
        donors = loader.dataset.donor_ids
        assert donors and all(donor != video for video, donor in donors.items())


def test_global_batch_sampler_gives_every_layout_the_same_micro_batches():
    """Steps of 8 clips: 1 process x 4 accumulation steps, 2 x 2 and 4 x 1 see the same micro-batches of 2 in each
    step; every step is full (the order padded from its start); a resume from step s on another layout yields
    exactly the rest."""
    from distinit.pipeline.clips.sampler import GlobalBatchSampler

    def micro_batches(world_size: int, start_step: int = 0) -> list[list[list[int]]]:
        """Per step, its micro-batches in slot order (micro a of rank r is slot a x world_size + r)."""
        per_rank = []
        for rank in range(world_size):
            sampler = GlobalBatchSampler(21, batch_size=2, global_batch=8, seed=5, rank=rank, world_size=world_size)
            sampler.set_epoch(3, start_step=start_step)
            indices = [key.index for key in sampler]
            assert all(key.epoch == 3 for key in sampler) and len(indices) == len(sampler)
            per_rank.append([indices[at:at + 2] for at in range(0, len(indices), 2)])
        accum = 8 // (2 * world_size)
        steps = len(per_rank[0]) // accum
        return [[per_rank[slot % world_size][step * accum + slot // world_size] for slot in range(4)]
                for step in range(steps)]

    alone = micro_batches(1)
    assert len(alone) == 3 and micro_batches(2) == alone == micro_batches(4)
    flat = [index for step in alone for micro in step for index in micro]
    assert sorted(set(flat)) == list(range(21)) and flat[21:] == flat[:3]  # padded with the order's start
    assert micro_batches(2, start_step=1) == alone[1:] == micro_batches(1, start_step=1)
    with pytest.raises(ValueError, match="not a multiple"):
        GlobalBatchSampler(21, batch_size=2, global_batch=8, seed=5, world_size=3)
