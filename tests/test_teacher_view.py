"""Teacher and student see the same pixels: stage one records the part of each frame a teacher saw (its view box),
stage two keeps the student's crop inside the view of the teachers that feed the loss (crop_in_teacher_view)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from distinit.distill.data import TargetClipDataset, loss_teachers
from distinit.extract.config import ExtractConfig
from distinit.extract.run import run_extraction
from distinit.extract.teachers.base import center_crop_view_box
from distinit.pipeline.clips import views
from distinit.pipeline.clips.spec import ClipSpec
from distinit.pipeline.shards import TargetStore, verify
from distinit.pipeline.video.binary import ffmpeg_binary
from distinit.pipeline.video.decode import output_size

LITE0 = "imagenet-efficientnet-lite0"
VIDEOS = {"wide": (128, 72), "classic": (64, 48)}  # 16:9 and 4:3
# Student frames of the 16:9 clip: 86 x 48, crop 32; Lite0 saw x 21.9 .. 64.1 and y 3 .. 45 of them.
CLIP = ClipSpec(frames=2, stride=2, short_side=48, crop=32)
DRAWS = 40


@pytest.fixture(scope="module")
def targets(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    for name, (width, height) in VIDEOS.items():
        subprocess.run([ffmpeg_binary(), "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate=10",
                        "-t", "2", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "5", str(root / f"{name}.mp4")],
                       check=True, timeout=60)
    config = ExtractConfig(data="folder", root=str(root), out=str(tmp_path_factory.mktemp("targets")), shard_count=1,
                           workers=0, batch_size=8, teachers=(LITE0,))
    return run_extraction(config, show_progress=False).targets_dir


def _crops(targets: Path, monkeypatch, **options) -> list[tuple[int, int, float]]:
    """(top, left, crop_in_view) of DRAWS training samples of the 16:9 video (several epochs)."""
    drawn = []
    real_crop_frames = views.crop_frames

    def recording(frames, top, left, crop):
        drawn.append((top, left))
        return real_crop_frames(frames, top, left, crop)

    monkeypatch.setattr(views, "crop_frames", recording)
    dataset = TargetClipDataset(targets, ["wide"], CLIP, train=True, clips_per_video=DRAWS // 4, **options)
    fractions = []
    for epoch in range(4):
        dataset.set_epoch(epoch)
        fractions.extend(dataset[index]["crop_in_view"] for index in range(len(dataset)))
    monkeypatch.setattr(views, "crop_frames", real_crop_frames)
    assert len(drawn) == len(fractions) == DRAWS
    return [(top, left, fraction) for (top, left), fraction in zip(drawn, fractions)]


def _inside_fraction(top: int, left: int, box: np.ndarray, height: int = 48, width: int = 86, crop: int = 32) -> float:
    """Written out here, not views.inside_fraction: the area of the crop inside the box, over the crop's area."""
    x0, y0, x1, y1 = (float(value) for value in box)
    rows = max(0.0, min(top + crop, y1 * height) - max(top, y0 * height))
    columns = max(0.0, min(left + crop, x1 * width) - max(left, x0 * width))
    return rows * columns / crop**2


def test_stage_one_records_each_teachers_view_of_each_video(targets):
    assert verify(targets) == []
    with TargetStore(targets) as store:
        for name, (width, height) in VIDEOS.items():
            boxes = store.view_boxes_for_video(name)
            decoded_width, decoded_height = output_size(width, height, 256)  # the frames Lite0 was given
            expected = center_crop_view_box(decoded_height, decoded_width, 256, 224)
            np.testing.assert_array_equal(boxes[LITE0], np.tile(np.float32(expected), (4, 1)))
        wide = store.view_boxes_for_video("wide")[LITE0][0]
        np.testing.assert_allclose(wide, (0.2544, 0.0625, 0.7456, 0.9375), atol=1e-4)  # 116..340 of 456, 16..240 of 256


def test_student_crop_inside_teacher_view(targets, monkeypatch):
    with TargetStore(targets) as store:
        box = store.view_boxes_for_video("wide")[LITE0][0]
    assert output_size(*VIDEOS["wide"], CLIP.short_side) == (86, 48)
    whole = _crops(targets, monkeypatch, crop_in_teacher_view=1.0)
    assert all(_inside_fraction(top, left, box) > 1 - 1e-9 for top, left, _ in whole)
    assert len({(top, left) for top, left, _ in whole}) > 10  # random within the box, not one fixed crop
    # A flip mirrors the crop's pixels: the mirrored crop (at 86 - left - 32) lies inside the mirrored box.
    mirrored = np.float32((1 - box[2], box[1], 1 - box[0], box[3]))
    assert all(_inside_fraction(top, 86 - 32 - left, mirrored) > 1 - 1e-9 for top, left, _ in whole)
    anywhere = _crops(targets, monkeypatch, crop_in_teacher_view=0.0)
    outside = [_inside_fraction(top, left, box) for top, left, _ in anywhere]
    assert sum(fraction < 1 for fraction in outside) >= DRAWS // 4 and min(outside) < 0.75
    half = _crops(targets, monkeypatch, crop_in_teacher_view=0.5)
    assert all(_inside_fraction(top, left, box) >= 0.5 - 1e-9 for top, left, _ in half)
    assert any(_inside_fraction(top, left, box) < 1 for top, left, _ in half)  # not the 1.0 rule
    # Each sample says how much of it lay in the view (what the epoch log averages).
    for draws in (whole, anywhere, half):
        assert all(abs(fraction - _inside_fraction(top, left, box)) < 1e-6 for top, left, fraction in draws)


def test_only_teachers_that_feed_the_loss_bound_the_crop(targets, monkeypatch):
    pose = {"name": "pose", "outputs": [
        {"name": "keypoints", "shape": [17, 3], "kind": "keypoints", "attributes": {"heatmap_grid": 4, "heatmap_sigma_cells": 1.0}},
        {"name": "person_present", "shape": [], "kind": "flag"}]}
    counter = {"name": "counter", "outputs": [{"name": "num_people", "shape": [], "kind": "count"}]}  # no head
    with TargetStore(targets) as store:
        teachers = [*store.teachers, pose, counter]
        assert loss_teachers(teachers) == [LITE0, "pose"]
        assert loss_teachers(teachers, {"imagenet": 0.0, "pose": 0.5}) == ["pose"]
        box = store.view_boxes_for_video("wide")[LITE0][0]
    # Lite0 weighted 0: no teacher's view bounds the crop, so it may go anywhere.
    free = _crops(targets, monkeypatch, crop_in_teacher_view=1.0, loss_weights={LITE0: 0.0})
    assert any(_inside_fraction(top, left, box) < 1 for top, left, _ in free)
    assert all(fraction == 1.0 for _, _, fraction in free)
    # Evaluation crops: centred on the view.
    sample = TargetClipDataset(targets, ["wide"], CLIP, train=False)[0]
    assert sample["crop_in_view"] > 1 - 1e-9
