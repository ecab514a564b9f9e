"""Crop, flip and normalisation of clips (pipeline.clips.views, pipeline.clips.normalisation) and of targets
(distill.augment)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distinit.distill import augment
from distinit.distill.keypoint_heatmaps import rendered_teachers
from distinit.extract.teachers.coco_classes import COCO_KEYPOINT_FLIP_INDEX, COCO_KEYPOINT_NAMES
from distinit.pipeline.clips import normalisation, views
from distinit.pipeline.shards import ShardError

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
    assert views.crop_box(48, 64, 24, None) == (12, 20)
    rng = np.random.default_rng(0)
    boxes = {views.crop_box(48, 64, 24, rng) for _ in range(200)}
    assert all(0 <= top <= 24 and 0 <= left <= 40 for top, left in boxes)
    assert len(boxes) > 50  # really random
    with pytest.raises(ValueError):
        views.crop_box(20, 64, 24, None)
    frames = np.arange(2 * 48 * 64 * 3, dtype=np.int64).reshape(2, 48, 64, 3)
    cropped = views.crop_frames(frames, 5, 7, 24)
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
    from distinit.extract.teachers.keypoint_coordinates import keypoint_outputs

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
    flipped = views.flip_frames(frames)
    assert flipped[1, 2, 0, 1] == frames[1, 2, 4, 1]


def test_rgb_normalisation_uses_the_video_mean_and_std():
    frames = np.zeros((2, 3, 3, 3), dtype=np.uint8)
    frames[..., 0] = 255
    video = normalisation.rgb_to_tensor(frames)
    assert video.shape == (3, 2, 3, 3) and video.dtype == torch.float32
    expected_red = (1.0 - normalisation.VIDEO_MEAN[0]) / normalisation.VIDEO_STD[0]
    expected_green = (0.0 - normalisation.VIDEO_MEAN[1]) / normalisation.VIDEO_STD[1]
    assert torch.allclose(video[0], torch.full((2, 3, 3), expected_red))
    assert torch.allclose(video[1], torch.full((2, 3, 3), expected_green))


def test_clips_travel_as_uint8_views_of_the_decoded_frames():
    frames = np.random.default_rng(2).integers(0, 256, (2, 6, 7, 3), dtype=np.uint8)  # (T, H, W, 3)
    cropped = views.crop_frames(frames, 1, 2, 4)
    video = views.rgb_clip_tensor(cropped)  # no copy: collating makes the one copy
    assert video.shape == (2, 4, 4, 3) and video.dtype == torch.uint8 and not video.is_contiguous()
    assert video.data_ptr() == cropped.__array_interface__["data"][0] and np.shares_memory(video.numpy(), frames)
    assert torch.equal(video, torch.from_numpy(np.ascontiguousarray(cropped)))
    batch = torch.utils.data.default_collate([video, video])  # (B, T, H, W, 3)
    assert batch.shape == (2, 2, 4, 4, 3) and batch.is_contiguous()
    with pytest.raises(ValueError, match="uint8"):
        views.rgb_clip_tensor(frames.astype(np.float32))


# ---------------------------------------------------------------- crops inside the teachers' view
# A classifier's centre square (224 of short side 256) of a 16:9 frame (456 x 256 decoded): x 0.254..0.746.
WIDE_VIEW = (116 / 456, 16 / 256, 340 / 456, 240 / 256)


def _inside(top: int, left: int, crop: int, height: int, width: int, box) -> bool:
    x0, y0, x1, y1 = box
    return x0 * width - 1e-9 <= left and left + crop <= x1 * width + 1e-9 and y0 * height - 1e-9 <= top \
        and top + crop <= y1 * height + 1e-9


def test_crops_keep_the_fraction_asked_inside_the_view_and_stay_random():
    height, width, crop = 48, 86, 32  # 16:9 at short side 48; the view is 42 x 42 px: 10 px of play each way
    draws = {}
    for fraction in (1.0, 0.5, 0.0):
        rng = np.random.default_rng(3)
        draws[fraction] = [views.crop_box(height, width, crop, rng, view_box=WIDE_VIEW, min_inside=fraction)
                           for _ in range(300)]
    inside = {fraction: [views.inside_fraction(*box, crop, height, width, WIDE_VIEW) for box in boxes]
              for fraction, boxes in draws.items()}
    assert all(_inside(*box, crop, height, width, WIDE_VIEW) for box in draws[1.0])
    assert min(inside[1.0]) > 1 - 1e-9 and min(inside[0.5]) >= 0.5 - 1e-9
    assert min(inside[0.0]) < 0.5 and sum(value < 1 for value in inside[0.0]) > 100  # anywhere: often outside
    assert len(set(draws[1.0])) >= 50 and len(set(draws[0.5])) > len(set(draws[1.0]))  # still random within the box
    lefts = [left for _, left in draws[1.0]]
    assert min(lefts) == 22 and max(lefts) == 32  # every left start that fits (the box is x 21.9 .. 64.2)
    # Evaluation: the crop nearest the box's centre.
    assert views.crop_box(height, width, crop, None, view_box=WIDE_VIEW, min_inside=1.0) == (8, 27)


def test_no_fraction_or_no_box_draws_exactly_as_before():
    # crop_in_teacher_view 0 (any box), no box, or a whole-frame teacher: the draws of the crop before views existed.
    for view, fraction in ((None, 1.0), (WIDE_VIEW, 0.0), ((0.0, 0.0, 1.0, 1.0), 1.0), ((0.0, 0.0, 1.0, 1.0), 0.5)):
        plain, boxed = np.random.default_rng(7), np.random.default_rng(7)
        for _ in range(50):
            expected = (int(plain.integers(48 - 32 + 1)), int(plain.integers(86 - 32 + 1)))
            assert views.crop_box(48, 86, 32, boxed, view_box=view, min_inside=fraction) == expected
        assert views.crop_box(48, 86, 32, None, view_box=view, min_inside=fraction) == (8, 27)


def test_a_view_narrower_than_the_crop_centres_the_crop_on_it():
    # The demo: 4:3 clips at short side 72 (96 x 72), crop 64; Lite0 saw 224 of 342 x 256: 62.9 x 63 px of it.
    from distinit.extract.teachers.base import center_crop_view_box

    view = center_crop_view_box(256, 342, 256, 224)
    rng = np.random.default_rng(0)
    pinned = {views.crop_box(72, 96, 64, rng, view_box=view, min_inside=1.0) for _ in range(50)}
    assert pinned == {(4, 16)} == {views.crop_box(72, 96, 64, None, view_box=view, min_inside=1.0)}
    best = views.inside_fraction(4, 16, 64, 72, 96, view)
    assert abs(best - (63 / 64) * (view[2] - view[0]) * 96 / 64) < 1e-9  # all of the box: as much as fits
    loose = [views.crop_box(72, 96, 64, rng, view_box=view, min_inside=0.5) for _ in range(200)]
    assert len(set(loose)) > 20 and min(views.inside_fraction(*box, 64, 72, 96, view) for box in loose) >= 0.5


def test_a_mirrored_crop_lies_inside_the_mirrored_view():
    # A flip mirrors the cropped pixels: they are the mirror image of a crop at width - left - crop, which lies
    # inside the mirrored box (1 - x1, y0, 1 - x0, y1) as much as the crop lies inside the box.
    height, width, crop = 48, 86, 32
    view = (0.30, 0.0625, 0.78, 0.9375)  # off-centre, so mirroring moves it
    mirrored_view = (1 - view[2], view[1], 1 - view[0], view[3])
    rng = np.random.default_rng(1)
    frames = np.arange(height * width, dtype=np.int64).reshape(1, height, width, 1)
    for _ in range(100):
        top, left = views.crop_box(height, width, crop, rng, view_box=view, min_inside=1.0)
        mirrored_left = width - left - crop
        assert _inside(top, mirrored_left, crop, height, width, mirrored_view)
        seen = views.flip_frames(views.crop_frames(frames, top, left, crop))
        assert np.array_equal(seen, views.crop_frames(views.flip_frames(frames), top, mirrored_left, crop))


def test_the_view_of_several_teachers_is_where_they_all_looked():
    boxes = [np.tile(np.float32(WIDE_VIEW), (3, 1)), np.float32([[0, 0, 1, 1]] * 3), np.float32([[0.3, 0, 0.9, 0.5]])]
    x0, y0, x1, y1 = augment.intersect_view_boxes(boxes)
    assert (x0, y0) == (np.float32(0.3), np.float32(WIDE_VIEW[1])) and (x1, y1) == (np.float32(WIDE_VIEW[2]), 0.5)
    assert augment.intersect_view_boxes([]) == (0.0, 0.0, 1.0, 1.0)
    disjoint = augment.intersect_view_boxes([np.float32([[0, 0, 0.4, 1]]), np.float32([[0.6, 0, 1, 1]])])
    assert disjoint[0] == disjoint[2] and views.inside_fraction(0, 0, 10, 20, 20, disjoint) == 0.0
