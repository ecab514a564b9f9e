"""Model outputs -> teacher targets, on hand-made detections and keypoints (no model is run)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from distinit.extract.teachers.coco_classes import (
    COCO_CLASS_NAMES,
    COCO_KEYPOINT_FLIP_INDEX,
    COCO_KEYPOINT_NAMES,
    TORCHVISION_LABEL_TO_CONTIGUOUS,
)
from distinit.extract.teachers.coco_keypoints import frame_detections_to_keypoint_targets
from distinit.extract.teachers.coco_objects import detections_to_object_targets
from distinit.extract.teachers.detections import FrameDetections
from distinit.extract.teachers.detectron2_models import detectron2_instances_to_detections
from distinit.pipeline.shards.format import KEYPOINT_GRID_ATTRIBUTE as HEATMAP_GRID_ATTRIBUTE
from distinit.pipeline.shards.format import KEYPOINT_SIGMA_ATTRIBUTE as HEATMAP_SIGMA_ATTRIBUTE
from distinit.extract.teachers.keypoint_coordinates import (
    DETECTRON2_KEYPOINT_PROBABILITY_AT_HALF,
    KEYPOINT_COLUMNS,
    NOWHERE,
    TORCHVISION_KEYPOINT_LOGIT_AT_HALF,
    detectron2_keypoint_confidence,
    keypoint_outputs,
    most_confident_person,
    person_keypoint_targets,
    relative_keypoints,
    torchvision_keypoint_confidence,
)
from distinit.extract.teachers.mediapipe_pose import MEDIAPIPE_TO_COCO_KEYPOINTS, landmarks_to_coco_keypoints
from distinit.extract.teachers.torchvision_detection import torchvision_labels_to_contiguous, torchvision_output_to_detections

# ---------------------------------------------------------------- class and keypoint tables


def test_coco_tables_agree_with_torchvision_metadata():
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights, KeypointRCNN_ResNet50_FPN_Weights

    categories = FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]  # 91 entries, "N/A" gaps
    for torchvision_label, name in enumerate(categories):
        contiguous = TORCHVISION_LABEL_TO_CONTIGUOUS[torchvision_label]
        if name in ("__background__", "N/A"):
            assert contiguous == -1
        else:
            assert COCO_CLASS_NAMES[contiguous] == name
    assert len(set(COCO_CLASS_NAMES)) == 80
    assert list(COCO_KEYPOINT_NAMES) == KeypointRCNN_ResNet50_FPN_Weights.COCO_V1.meta["keypoint_names"]


def test_keypoint_flip_index_swaps_left_and_right():
    flip = np.array(COCO_KEYPOINT_FLIP_INDEX)
    assert (flip[flip] == np.arange(17)).all()
    for index, name in enumerate(COCO_KEYPOINT_NAMES):
        mirrored = name.replace("left", "RIGHT").replace("right", "left").replace("RIGHT", "right")
        assert COCO_KEYPOINT_NAMES[flip[index]] == mirrored


# ---------------------------------------------------------------- objects


def _expected_object_scores() -> np.ndarray:
    expected = np.zeros(80, np.float32)
    expected[[0, 2, 11, 79]] = [0.9, 0.6, 0.7, 0.04]
    return expected


def test_object_targets_from_contiguous_labels():
    labels = np.array([0, 0, 2, 11, 79, -1])  # person twice, car, stop sign, toothbrush, ignored
    scores = np.array([0.9, 0.3, 0.6, 0.7, 0.04, 0.99], np.float32)
    class_scores, num_confident = detections_to_object_targets(labels, scores, confident_threshold=0.5)
    np.testing.assert_allclose(class_scores, _expected_object_scores())
    assert num_confident == 3  # 0.9, 0.6, 0.7; the unlabelled 0.99 does not count
    assert detections_to_object_targets(labels, scores, confident_threshold=0.8)[1] == 1


def test_object_targets_from_torchvision_labels():
    torchvision_labels = np.array([1, 1, 3, 13, 90, 12, 0])  # 12 is an unused COCO id, 0 the background
    contiguous = torchvision_labels_to_contiguous(torchvision_labels)
    np.testing.assert_array_equal(contiguous, [0, 0, 2, 11, 79, -1, -1])
    scores = np.array([0.9, 0.3, 0.6, 0.7, 0.04, 0.99, 0.98], np.float32)
    class_scores, num_confident = detections_to_object_targets(contiguous, scores, confident_threshold=0.5)
    np.testing.assert_allclose(class_scores, _expected_object_scores())
    assert num_confident == 3
    output = {"labels": torch.tensor(torchvision_labels), "scores": torch.tensor(scores), "boxes": torch.zeros(7, 4)}
    detections = torchvision_output_to_detections(output)
    np.testing.assert_array_equal(detections.labels, contiguous)
    assert detections.keypoints_xy is None


def test_object_targets_from_detectron2_instances():
    instances = SimpleNamespace(  # the fields of detectron2.structures.Instances that we read
        scores=torch.tensor([0.9, 0.3, 0.6, 0.7, 0.04]),
        pred_classes=torch.tensor([0, 0, 2, 11, 79]),
        pred_boxes=SimpleNamespace(tensor=torch.zeros(5, 4)),
    )
    detections = detectron2_instances_to_detections(instances)
    class_scores, num_confident = detections_to_object_targets(detections.labels, detections.scores)
    np.testing.assert_allclose(class_scores, _expected_object_scores())
    assert num_confident == 3


def test_object_targets_with_no_detections():
    class_scores, num_confident = detections_to_object_targets(np.zeros(0, np.int64), np.zeros(0, np.float32))
    assert class_scores.shape == (80,) and not class_scores.any() and num_confident == 0


# ---------------------------------------------------------------- keypoints


def test_keypoints_are_stored_relative_to_the_frame():
    width, height = 640, 480
    keypoints = np.array([[0.75 * width, 0.25 * height], [10.0, 470.0], [-5.0, 500.0], [np.nan, 3.0]])
    stored = relative_keypoints(keypoints, np.array([1.0, 0.8, 1.7, 0.9]), width, height)
    assert stored.shape == (4, 3) and stored.dtype == np.float32
    np.testing.assert_allclose(stored[0], [0.75, 0.25, 1.0])
    np.testing.assert_allclose(stored[1], [10 / 640, 470 / 480, 0.8], rtol=1e-6)
    np.testing.assert_allclose(stored[2], [-5 / 640, 500 / 480, 1.0], rtol=1e-6)  # outside the frame: kept, clipped confidence
    np.testing.assert_array_equal(stored[3], [NOWHERE, NOWHERE, 0.0])  # no position: nowhere, unsure (never NaN)
    assert list(KEYPOINT_COLUMNS) == ["x_relative", "y_relative", "confidence"]


def test_person_targets_pick_the_most_confident_person():
    keypoints = np.zeros((3, 17, 2), np.float32)
    keypoints[0] += [10, 10]
    keypoints[1] += [90, 80]  # the most confident person
    keypoints[2] += [50, 10]
    confidence = np.ones((3, 17), np.float32)
    person_scores = np.array([0.6, 0.95, 0.7])
    stored, present = person_keypoint_targets(person_scores, keypoints, confidence, 100, 200, 0.5)
    assert present == 1 and stored.shape == (17, 3)
    np.testing.assert_allclose(stored, np.tile([0.9, 0.4, 1.0], (17, 1)), rtol=1e-6)
    stored, present = person_keypoint_targets(np.array([0.2, 0.3, 0.1]), keypoints, confidence, 100, 200, 0.5)
    assert present == 0 and stored.shape == (17, 3) and _nobody(stored)
    assert most_confident_person(np.zeros(0), 0.5) is None


def test_keypoint_targets_ignore_detections_that_are_not_people():
    keypoints = np.stack([np.full((17, 2), 10.0), np.full((17, 2), 90.0)]).astype(np.float32)
    detections = FrameDetections(
        labels=np.array([5, 0]),  # a very confident bus, then a person
        scores=np.array([0.99, 0.8], np.float32),
        keypoints_xy=keypoints,
        keypoint_confidence=np.ones((2, 17), np.float32),
    )
    stored, present = frame_detections_to_keypoint_targets(detections, 100, 100, 0.5)
    assert present == 1
    np.testing.assert_allclose(stored[:, :2], 0.9, rtol=1e-6)
    nobody = FrameDetections(labels=np.zeros(0, np.int64), scores=np.zeros(0, np.float32))
    stored, present = frame_detections_to_keypoint_targets(nobody, 100, 100, 0.5)
    assert present == 0 and stored.shape == (17, 3) and _nobody(stored)


def test_backend_keypoint_scores_become_confidences():
    torchvision_confidence = torchvision_keypoint_confidence(np.array([-10.0, 2.0, 12.0]))
    np.testing.assert_allclose(torchvision_confidence[1], 0.5)
    assert torchvision_confidence[0] < 0.01 and torchvision_confidence[2] > 0.99
    detectron2_confidence = detectron2_keypoint_confidence(np.array([0.0, 0.05, 0.5]))
    np.testing.assert_allclose(detectron2_confidence, [0.0, 0.5, 0.5 / 0.55], rtol=1e-6)


# The same person (nose at (30, 60), the rest at (85, 25) of a 100 x 100 frame, confidence 0.5) as each
# backend reports it; all three must store the same (17, 3) keypoints.
SAME_PERSON = np.tile([0.85, 0.25, 0.5], (17, 1)).astype(np.float32)
SAME_PERSON[0] = [0.30, 0.60, 0.5]


def _same_person_pixels() -> torch.Tensor:
    keypoints = torch.zeros(17, 2)
    keypoints[:] = torch.tensor([85.0, 25.0])
    keypoints[0] = torch.tensor([30.0, 60.0])
    return keypoints


def test_torchvision_keypoint_output_conversion():
    keypoints = torch.ones(2, 17, 3)  # torchvision's [..., 2] is always 1
    keypoints[0, :, :2] = _same_person_pixels()
    output = {
        "labels": torch.tensor([1, 1]),
        "scores": torch.tensor([0.9, 0.4]),
        "keypoints": keypoints,
        "keypoints_scores": torch.full((2, 17), TORCHVISION_KEYPOINT_LOGIT_AT_HALF),
    }
    detections = torchvision_output_to_detections(output)
    np.testing.assert_array_equal(detections.labels, [0, 0])
    np.testing.assert_allclose(detections.keypoint_confidence, 0.5)
    stored, present = frame_detections_to_keypoint_targets(detections, 100, 100, 0.5)
    assert present == 1
    np.testing.assert_allclose(stored, SAME_PERSON, rtol=1e-6)


def test_detectron2_keypoint_instances_conversion():
    pred_keypoints = torch.zeros(2, 17, 3)
    pred_keypoints[0, :, :2] = _same_person_pixels()
    pred_keypoints[1, :, :2] = torch.tensor([10.0, 90.0])
    pred_keypoints[..., 2] = DETECTRON2_KEYPOINT_PROBABILITY_AT_HALF
    instances = SimpleNamespace(
        scores=torch.tensor([0.97, 0.6]), pred_classes=torch.tensor([0, 0]), pred_keypoints=pred_keypoints
    )
    detections = detectron2_instances_to_detections(instances)
    assert detections.keypoints_xy.shape == (2, 17, 2)
    stored, present = frame_detections_to_keypoint_targets(detections, 100, 100, 0.5)
    assert present == 1
    np.testing.assert_allclose(stored, SAME_PERSON, rtol=1e-6)


def test_detectron2_frame_without_detections():
    instances = SimpleNamespace(scores=torch.zeros(0), pred_classes=torch.zeros(0, dtype=torch.int64),
                                pred_keypoints=torch.zeros(0, 17, 3))
    detections = detectron2_instances_to_detections(instances)
    assert detections.keypoints_xy.shape == (0, 17, 2) and detections.keypoint_confidence.shape == (0, 17)
    stored, present = frame_detections_to_keypoint_targets(detections, 100, 100, 0.5)
    assert present == 0 and stored.shape == (17, 3) and _nobody(stored)


def test_mediapipe_landmarks_map_to_coco_keypoints():
    landmarks = np.zeros((33, 3))
    landmarks[:, 0] = np.arange(33) / 33  # x encodes the landmark index
    landmarks[:, 1] = 0.5
    landmarks[:, 2] = np.linspace(0, 1, 33)
    stored = landmarks_to_coco_keypoints(landmarks)
    assert stored.shape == (17, 3) and stored.dtype == np.float32
    np.testing.assert_allclose(stored[:, 0], np.array(MEDIAPIPE_TO_COCO_KEYPOINTS) / 33, rtol=1e-6)
    np.testing.assert_allclose(stored[:, 1], 0.5)
    np.testing.assert_allclose(stored[:, 2], landmarks[list(MEDIAPIPE_TO_COCO_KEYPOINTS), 2], rtol=1e-6)
    assert MEDIAPIPE_TO_COCO_KEYPOINTS[COCO_KEYPOINT_NAMES.index("left_hip")] == 23
    same_person = np.zeros((33, 3))
    same_person[list(MEDIAPIPE_TO_COCO_KEYPOINTS)] = SAME_PERSON
    np.testing.assert_allclose(landmarks_to_coco_keypoints(same_person), SAME_PERSON, rtol=1e-6)
    landmarks[0, 0] = np.nan  # the nose's x: nowhere, confidence 0
    np.testing.assert_array_equal(landmarks_to_coco_keypoints(landmarks)[0], [NOWHERE, NOWHERE, 0.0])


def test_every_pose_teacher_declares_the_same_outputs():
    specs = [spec.describe() for spec in keypoint_outputs(14, 1.0, "any")]
    assert [(spec["name"], spec["kind"], spec["shape"], spec["dtype"]) for spec in specs] == [
        ("keypoints", "keypoints", [17, 3], "float16"), ("person_present", "flag", [], "uint8"),
    ]
    assert specs[0]["attributes"][HEATMAP_GRID_ATTRIBUTE] == 14 and specs[0]["attributes"][HEATMAP_SIGMA_ATTRIBUTE] == 1.0
    assert specs[0]["class_names"] == list(COCO_KEYPOINT_NAMES)


@pytest.mark.parametrize(
    "bad_frames", [np.zeros((2, 8, 8, 3), np.float32), np.zeros((8, 8, 3), np.uint8), np.zeros((1, 8, 8, 4), np.uint8)]
)
def test_teachers_reject_frames_of_the_wrong_type(bad_frames):
    from distinit.extract.teachers.base import Teacher

    teacher = Teacher()
    teacher.name = "any"
    with pytest.raises(ValueError, match="uint8 frames of shape"):
        teacher(bad_frames)


def _nobody(keypoints) -> bool:
    """Rows of a frame with nobody in it: every keypoint at NOWHERE (-1, -1) with confidence 0."""
    keypoints = np.asarray(keypoints, dtype=np.float32)
    return bool((keypoints[..., :2] == -1).all() and not keypoints[..., 2].any())
