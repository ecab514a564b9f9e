"""Crop, flip and normalisation of clips and targets (distill.augment)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill import augment
from distill.keypoint_heatmaps import rendered_teachers
from extract.teachers.coco_classes import COCO_KEYPOINT_FLIP_INDEX, COCO_KEYPOINT_NAMES
from pipeline.shards import ShardError

GRID = 4
# As stored: keypoint coordinates, drawn as (17, GRID, GRID) heatmaps over the crop in stage two.
KEYPOINTS_TEACHER = {
    "name": "coco-keypoints",
    "outputs": [
        {"name": "keypoints", "shape": [17, 3], "kind": "keypoints", "class_names": list(COCO_KEYPOINT_NAMES),
         "attributes": {"heatmap_grid": GRID, "heatmap_sigma_cells": 1.0}},
        {"name": "person_present", "shape": [], "kind": "flag", "class_names": None},
    ],
}
CLASSIFIER_TEACHER = {"name": "imagenet", "outputs": [{"name": "logits", "shape": [10], "kind": "logits"}]}


def test_centre_crop_and_random_crop_stay_inside():
    assert augment.crop_box(48, 64, 24, None) == (12, 20)
    rng = np.random.default_rng(0)
    boxes = {augment.crop_box(48, 64, 24, rng) for _ in range(200)}
    assert all(0 <= top <= 24 and 0 <= left <= 40 for top, left in boxes)
    assert len(boxes) > 50  # really random
    with pytest.raises(ValueError):
        augment.crop_box(20, 64, 24, None)
    frames = np.arange(2 * 48 * 64 * 3, dtype=np.int64).reshape(2, 48, 64, 3)
    cropped = augment.crop_frames(frames, 5, 7, 24)
    assert cropped.shape == (2, 24, 24, 3)
    assert cropped[1, 0, 0, 2] == frames[1, 5, 7, 2]


def test_coco_names_give_the_coco_flip_permutation():
    from_names = augment.keypoint_flip_permutation(COCO_KEYPOINT_NAMES, 17)
    assert from_names.tolist() == list(COCO_KEYPOINT_FLIP_INDEX)
    assert augment.keypoint_flip_permutation(None, 17).tolist() == list(range(17))  # unnamed: nothing to swap


def test_a_stored_flip_index_wins_over_names_and_a_bad_one_is_refused():
    stored = augment.keypoint_flip_permutation(["a", "b", "c"], 3, flip_index=[1, 0, 2])
    assert stored.tolist() == [1, 0, 2]
    with pytest.raises(ShardError, match="not a permutation of 3 keypoint channels; re-run extract"):
        augment.keypoint_flip_permutation(["a", "b", "c"], 3, flip_index=[0, 0, 2])


def test_the_flip_plan_reads_the_flip_index_the_teacher_wrote():
    from extract.teachers.keypoint_coordinates import keypoint_outputs

    described = {"name": "pose", "outputs": [spec.describe() for spec in keypoint_outputs(14, 1.0, "a pose teacher")]}
    described["outputs"][0]["class_names"] = None  # names gone: the stored flip index alone must swap sides
    plan = augment.heatmap_flip_plan(rendered_teachers([described]))
    assert plan["pose/heatmaps"].tolist() == list(COCO_KEYPOINT_FLIP_INDEX)
    assert augment.keypoint_flip_permutation(["a", "b", "c"], 3).tolist() == [0, 1, 2]
    assert augment.keypoint_flip_permutation(["left_hand", "nose", "right_hand"], 3).tolist() == [2, 1, 0]


def test_flip_mirrors_heatmaps_and_swaps_left_right_keypoints():
    left_wrist, right_wrist = COCO_KEYPOINT_NAMES.index("left_wrist"), COCO_KEYPOINT_NAMES.index("right_wrist")
    nose = COCO_KEYPOINT_NAMES.index("nose")
    heatmaps = np.zeros((17, GRID, GRID), dtype=np.float32)
    heatmaps[left_wrist, 2, 0] = 1.0  # peak at row 2, column 0
    heatmaps[nose, 1, 1] = 1.0
    targets = {
        "coco-keypoints/heatmaps": heatmaps,
        "coco-keypoints/person_present": np.float32(1.0),
        "imagenet/logits": np.arange(10, dtype=np.float32),
    }
    plan = augment.heatmap_flip_plan(rendered_teachers([CLASSIFIER_TEACHER, KEYPOINTS_TEACHER]))
    assert set(plan) == {"coco-keypoints/heatmaps"}
    flipped = augment.flip_targets(targets, plan)
    mirrored = flipped["coco-keypoints/heatmaps"]
    # The left wrist's map lands in the right wrist's channel, its peak at column G - 1 - 0.
    assert mirrored[right_wrist, 2, GRID - 1] == 1.0 and mirrored[right_wrist].sum() == 1.0
    assert mirrored[left_wrist].sum() == 0.0
    assert mirrored[nose, 1, GRID - 2] == 1.0  # unpaired keypoints only mirror
    np.testing.assert_array_equal(flipped["imagenet/logits"], targets["imagenet/logits"])
    assert flipped["coco-keypoints/person_present"] == 1.0
    # Flipping twice gives back the original.
    np.testing.assert_array_equal(augment.flip_targets(flipped, plan)["coco-keypoints/heatmaps"], heatmaps)


def test_flip_frames_mirrors_width():
    frames = np.random.default_rng(0).integers(0, 255, (3, 4, 5, 3), dtype=np.uint8)
    flipped = augment.flip_frames(frames)
    assert flipped[1, 2, 0, 1] == frames[1, 2, 4, 1]


def test_rgb_normalisation_uses_the_video_mean_and_std():
    frames = np.zeros((2, 3, 3, 3), dtype=np.uint8)
    frames[..., 0] = 255
    video = augment.rgb_to_tensor(frames)
    assert video.shape == (3, 2, 3, 3) and video.dtype == torch.float32
    expected_red = (1.0 - augment.VIDEO_MEAN[0]) / augment.VIDEO_STD[0]
    expected_green = (0.0 - augment.VIDEO_MEAN[1]) / augment.VIDEO_STD[1]
    assert torch.allclose(video[0], torch.full((2, 3, 3), expected_red))
    assert torch.allclose(video[1], torch.full((2, 3, 3), expected_green))


def test_clips_travel_as_uint8_channels_first():
    frames = np.random.default_rng(2).integers(0, 256, (2, 3, 5, 3), dtype=np.uint8)  # (T, H, W, 3)
    video = augment.rgb_frames_to_tensor(augment.flip_frames(frames))  # a flipped view is made contiguous
    assert video.shape == (3, 2, 3, 5) and video.dtype == torch.uint8 and video.is_contiguous()
    assert video[2, 1, 0, 4] == frames[1, 0, 0, 2]
    with pytest.raises(ValueError, match="uint8"):
        augment.rgb_frames_to_tensor(frames.astype(np.float32))
