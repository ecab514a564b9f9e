"""Keypoint coordinates drawn as heatmaps over the student's crop (distill.keypoint_heatmaps)."""

from __future__ import annotations

import numpy as np
import pytest

from distinit.distill import augment
from distinit.distill.heads import head_specs_from_teachers
from distinit.distill.keypoint_heatmaps import (
    crop_pixels, draw_heatmaps, heatmap_peak_cells, keypoint_targets, render_window, rendered_teachers,
)
from distinit.distill.windows import aggregate_targets, heatmap_flags
from distinit.extract.teachers.coco_classes import COCO_KEYPOINT_NAMES
from distinit.extract.teachers.keypoint_coordinates import keypoint_outputs, relative_keypoints
from distinit.pipeline.clips import views
from distinit.pipeline.shards import ShardError

GRID, CROP = 14, 112
CELL = CROP // GRID  # 8 pixels per cell
# A 16:9-ish frame at the clip's short side: 170 x 128, as the demo's photo clips decode at short side 128.
FRAME_HEIGHT, FRAME_WIDTH = 128, 170
POSE_TEACHER = {"name": "coco-keypoints", "outputs": [spec.describe() for spec in keypoint_outputs(GRID, 1.0, "test")]}
LEFT_WRIST, RIGHT_WRIST = COCO_KEYPOINT_NAMES.index("left_wrist"), COCO_KEYPOINT_NAMES.index("right_wrist")
NOSE = COCO_KEYPOINT_NAMES.index("nose")


def stored_row(pixels: dict[int, tuple[float, float]], teacher_width: int = 340, teacher_height: int = 256) -> np.ndarray:
    """One frame's stored keypoints (17, 3), as stage one writes them (float16), from keypoints given in the
    pixels of the frame the teacher saw (twice the student's size here); the others far off-frame."""
    keypoints_xy = np.full((17, 2), -1000.0)
    for index, (x, y) in pixels.items():
        keypoints_xy[index] = (x, y)
    stored = relative_keypoints(keypoints_xy, np.ones(17), teacher_width, teacher_height)
    return stored.astype(np.float16).astype(np.float32)


def window(rows: list[np.ndarray], present: list[int]) -> dict[str, np.ndarray]:
    return {"coco-keypoints/keypoints": np.stack(rows), "coco-keypoints/person_present": np.array(present, np.float32)}


def render(rows: dict, top: int, left: int) -> dict[str, np.ndarray]:
    targets = keypoint_targets([POSE_TEACHER])
    drawn = render_window(rows, targets, FRAME_HEIGHT, FRAME_WIDTH, top, left, CROP)
    kinds = {"coco-keypoints/heatmaps": "heatmaps", "coco-keypoints/person_present": "flag"}
    return aggregate_targets(drawn, kinds, "mean", heatmap_masks=heatmap_flags(rendered_teachers([POSE_TEACHER])))


def test_keypoint_target_follows_the_crop():
    # The centre crop of a 170-wide frame starts at column 29: the keypoint in the frame's pixel column 29
    # (centre x = 29.5) is in the crop's column 0, so in grid cell 0; one in column 28 is outside the crop.
    top, left = views.crop_box(FRAME_HEIGHT, FRAME_WIDTH, CROP, None)
    assert (top, left) == (8, 29)
    # The teacher saw the frame at 340 x 256: pixel (59, 129) there is (29.5, 64.5) at the student's size.
    row = stored_row({NOSE: (59.0, 129.0), LEFT_WRIST: (57.0, 129.0), RIGHT_WRIST: (75.0, 129.0)})
    np.testing.assert_allclose(crop_pixels(row, FRAME_HEIGHT, FRAME_WIDTH, top, left)[NOSE], [0.5, 56.5], atol=0.02)
    centred = render(window([row], [1]), top, left)
    maps = centred["coco-keypoints/heatmaps"]
    assert maps.shape == (17, GRID, GRID) and centred["coco-keypoints/person_present"] == 1.0
    assert heatmap_peak_cells(maps)[NOSE].tolist() == [56 // CELL, 0]  # row 7, column 0
    assert heatmap_peak_cells(maps)[RIGHT_WRIST].tolist() == [7, 1]  # x 37.5 - 29 = 8.5 px: cell 1
    assert not maps[LEFT_WRIST].any()  # column 28: outside the crop, no mass
    assert not maps[COCO_KEYPOINT_NAMES.index("left_ankle")].any()  # off-frame
    np.testing.assert_allclose(maps[NOSE].sum(), 1.0, rtol=1e-5)

    # Two random crops of one window give targets shifted by the crops' offset.
    rng = np.random.default_rng(4)
    boxes = {views.crop_box(FRAME_HEIGHT, FRAME_WIDTH, CROP, rng) for _ in range(40)}
    middle = stored_row({NOSE: (171.0, 129.0)})  # (85.5, 64.5) at the student's size: inside every crop
    peaks = {}
    for top, left in boxes:
        peak = heatmap_peak_cells(render(window([middle], [1]), top, left)["coco-keypoints/heatmaps"])[NOSE]
        assert peak.tolist() == [int((64.5 - top) // CELL), int((85.5 - left) // CELL)]
        peaks[top, left] = peak.tolist()
    assert len(set(map(tuple, peaks.values()))) > 3
    # Crops 16 px apart: the same maps, two cells over (a Gaussian in the middle loses nothing at the edges).
    first = render(window([middle], [1]), 8, 10)["coco-keypoints/heatmaps"][NOSE]
    second = render(window([middle], [1]), 8, 26)["coco-keypoints/heatmaps"][NOSE]
    np.testing.assert_allclose(second[:, : GRID - 2], first[:, 2:], atol=1e-6)

    # A flip mirrors the maps and swaps left and right: the left wrist's map becomes the right wrist's,
    # the exact mirror image, and equal to drawing the keypoint at x' = crop - x.
    top, left = 8, 29
    plan = augment.heatmap_flip_plan(rendered_teachers([POSE_TEACHER]))
    assert set(plan) == {"coco-keypoints/heatmaps"}
    wrist = stored_row({LEFT_WRIST: (100.0, 129.0)})
    plain = render(window([wrist], [1]), top, left)
    flipped = augment.flip_targets(plain, plan)["coco-keypoints/heatmaps"]
    np.testing.assert_array_equal(flipped[RIGHT_WRIST], plain["coco-keypoints/heatmaps"][LEFT_WRIST][:, ::-1])
    assert not flipped[LEFT_WRIST].any()
    x, y = crop_pixels(wrist, FRAME_HEIGHT, FRAME_WIDTH, top, left)[LEFT_WRIST]
    redrawn, _ = draw_heatmaps(np.array([[CROP - x, y]]), np.array([1.0]), CROP, GRID, 1.0)
    np.testing.assert_allclose(flipped[RIGHT_WRIST], redrawn[0], atol=1e-6)


def test_a_person_counts_only_when_a_keypoint_is_inside_the_crop():
    inside = stored_row({NOSE: (170.0, 128.0)})
    outside = stored_row({NOSE: (20.0, 128.0)})  # x = 10 at the student's size, left of the centre crop
    rows = window([inside, outside, inside], [1, 1, 0])  # the third: the teacher saw nobody
    drawn = render_window(rows, keypoint_targets([POSE_TEACHER]), FRAME_HEIGHT, FRAME_WIDTH, 8, 29, CROP)
    assert drawn["coco-keypoints/person_present"].tolist() == [1.0, 0.0, 0.0]
    assert drawn["coco-keypoints/heatmaps"][0].any() and not drawn["coco-keypoints/heatmaps"][1:].any()
    assert "coco-keypoints/keypoints" not in drawn
    # The window's target is the frame with a person in the crop, not diluted by the others.
    target = render(rows, 8, 29)
    np.testing.assert_array_equal(target["coco-keypoints/heatmaps"], drawn["coco-keypoints/heatmaps"][0])
    nobody = render(window([outside], [1]), 8, 29)
    assert nobody["coco-keypoints/person_present"] == 0.0 and not nobody["coco-keypoints/heatmaps"].any()


def test_confidence_mixes_peak_and_uniform_over_the_crop():
    point = np.array([[40.0, 40.0]])
    sharp, _ = draw_heatmaps(point, np.array([1.0]), CROP, 8, 0.5)
    half, _ = draw_heatmaps(point, np.array([0.5]), CROP, 8, 0.5)
    unsure, inside = draw_heatmaps(point, np.array([0.0]), CROP, 8, 0.5)
    assert inside.tolist() == [True]
    np.testing.assert_allclose(unsure, 1 / 64, rtol=1e-6)
    np.testing.assert_allclose(half, 0.5 * sharp + 0.5 / 64, rtol=1e-5)
    wide, _ = draw_heatmaps(point, np.array([1.0]), CROP, 8, 2.0)
    assert sharp.max() > half.max() > unsure.max() and sharp.max() > wide.max()
    edges = np.array([[0.0, 0.0], [CROP - 1e-3, 5.0], [CROP, 5.0], [-1e-3, 5.0], [np.nan, 5.0]])
    maps, inside = draw_heatmaps(edges, np.ones(5), CROP, 8, 1.0)
    assert inside.tolist() == [True, True, False, False, False]
    assert not maps[2:].any()


def test_students_and_masks_see_the_drawn_heatmaps():
    rendered = rendered_teachers([POSE_TEACHER])
    assert [(output["name"], output["kind"], output["shape"]) for output in rendered[0]["outputs"]] == [
        ("heatmaps", "heatmaps", [17, GRID, GRID]), ("person_present", "flag", []),
    ]
    assert POSE_TEACHER["outputs"][0]["name"] == "keypoints"  # the stored description is left alone
    (head,) = head_specs_from_teachers([POSE_TEACHER])
    assert (head.key, head.kind, head.shape) == ("coco-keypoints/heatmaps", "heatmaps", (17, GRID, GRID))
    assert head.mask_key == "coco-keypoints/person_present" and head.class_names == COCO_KEYPOINT_NAMES


def test_a_keypoints_output_without_its_grid_is_refused():
    broken = {"name": "pose", "outputs": [{**POSE_TEACHER["outputs"][0], "attributes": {}}, POSE_TEACHER["outputs"][1]]}
    with pytest.raises(ShardError, match="teacher pose output keypoints: no valid heatmap_grid"):
        keypoint_targets([broken])


def test_zero_confidence_keypoints_alone_are_no_person():
    from distinit.distill.keypoint_heatmaps import KeypointTarget
    from distinit.extract.teachers.keypoint_coordinates import empty_keypoints

    # Frame 0: its only keypoint inside the crop has confidence 0; frame 1: one confident keypoint inside.
    rows = {"k/keypoints": np.zeros((2, 17, 3)), "k/person_present": np.ones(2, np.float32)}
    rows["k/keypoints"][:, :, :2] = -1.0
    rows["k/keypoints"][0, 0] = [0.5, 0.5, 0.0]
    rows["k/keypoints"][1, 0] = [0.5, 0.5, 0.8]
    target = KeypointTarget("k/keypoints", "k/heatmaps", "k/person_present", 14, 1.0)
    rendered = render_window(rows, [target], frame_height=128, frame_width=170, top=8, left=29, crop=112)
    assert rendered["k/person_present"].tolist() == [0.0, 1.0]
    assert not rendered["k/heatmaps"][0].any() and rendered["k/heatmaps"][1, 0].sum() == pytest.approx(1.0)
    # A frame with nobody in it stores every keypoint outside any crop, not at the top-left corner.
    empty = empty_keypoints()
    assert (empty[:, :2] < 0).all() and not empty[:, 2].any()
