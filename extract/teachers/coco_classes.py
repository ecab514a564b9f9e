"""COCO's 80 object classes and 17 person keypoints, in the order every teacher and student uses.

Two label schemes exist for COCO detectors:
- contiguous 0..79 (Detectron2, and our HDF5 outputs): index into `COCO_CLASS_NAMES`;
- the original COCO category ids 1..90 with 10 unused ids (torchvision's detection models, whose
  label 0 is the background). `TORCHVISION_LABEL_TO_CONTIGUOUS` maps the second onto the first.
"""

from __future__ import annotations

import numpy as np

COCO_CLASS_NAMES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)
NUM_COCO_CLASSES = len(COCO_CLASS_NAMES)
PERSON_CLASS_INDEX = 0

# COCO category ids that name no class (the 2014 paper listed 91 categories, the annotations use 80).
UNUSED_COCO_CATEGORY_IDS: tuple[int, ...] = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)
COCO_CATEGORY_IDS: tuple[int, ...] = tuple(
    category_id for category_id in range(1, 91) if category_id not in UNUSED_COCO_CATEGORY_IDS
)
NUM_TORCHVISION_DETECTION_CLASSES = 91  # background (0) + category ids 1..90


def _torchvision_label_table() -> np.ndarray:
    table = np.full(NUM_TORCHVISION_DETECTION_CLASSES, -1, dtype=np.int64)
    for contiguous_index, category_id in enumerate(COCO_CATEGORY_IDS):
        table[category_id] = contiguous_index
    table.setflags(write=False)
    return table


# torchvision label (0..90) -> contiguous class index (0..79), or -1 for background and unused ids.
TORCHVISION_LABEL_TO_CONTIGUOUS: np.ndarray = _torchvision_label_table()

COCO_KEYPOINT_NAMES: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
    "right_knee", "left_ankle", "right_ankle",
)
NUM_COCO_KEYPOINTS = len(COCO_KEYPOINT_NAMES)

# Keypoints that swap when the frame is mirrored left-right (stage two's flip augmentation needs them).
COCO_KEYPOINT_FLIP_PAIRS: tuple[tuple[int, int], ...] = (
    (1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16),
)


def _flip_permutation() -> tuple[int, ...]:
    permutation = list(range(NUM_COCO_KEYPOINTS))
    for left, right in COCO_KEYPOINT_FLIP_PAIRS:
        permutation[left], permutation[right] = right, left
    return tuple(permutation)


# heatmaps_of_mirrored_frame = heatmaps[COCO_KEYPOINT_FLIP_INDEX][..., ::-1]
COCO_KEYPOINT_FLIP_INDEX: tuple[int, ...] = _flip_permutation()
