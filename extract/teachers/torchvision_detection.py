"""torchvision's COCO detectors (Faster / Mask / Keypoint R-CNN, ResNet-50-FPN) as frozen, batched models.

torchvision labels detections with the original COCO category ids (1..90, 0 = background, 10 ids
unused); we map them to the contiguous 0..79 classes Detectron2 and our outputs use. Weights: `weights=FILE`
(a state_dict .pth), else torchvision's COCO_V1 file in the torch hub cache (`<torch hub dir>/checkpoints/`),
downloaded there on first use with torch.hub's hash check, as torchvision itself would (never when offline).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from distinit.extract.teachers.base import freeze, frames_to_tensor
from distinit.extract.teachers.coco_classes import (
    NUM_COCO_KEYPOINTS,
    NUM_TORCHVISION_DETECTION_CLASSES,
    TORCHVISION_LABEL_TO_CONTIGUOUS,
)
from distinit.extract.teachers.detections import FrameDetections
from distinit.extract.teachers.keypoint_coordinates import torchvision_keypoint_confidence
from distinit.pipeline.errors import ConfigError
from distinit.pipeline.weights.download import fetch_torch_hub_file
from distinit.pipeline.weights.files import RANDOM_INIT_SHA256, RANDOM_WEIGHTS, load_weights_into

logger = logging.getLogger(__name__)

TORCHVISION_OBJECT_DETECTORS = (
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "maskrcnn_resnet50_fpn",
    "maskrcnn_resnet50_fpn_v2",
)
TORCHVISION_KEYPOINT_DETECTORS = ("keypointrcnn_resnet50_fpn",)
# weights="random" is one fixed initialisation (its stage key says "random-init", so it must give the same targets).
RANDOM_INIT_SEED = 0


def torchvision_detector_weights_url(model_name: str) -> str:
    """The COCO weights torchvision publishes for a detector builder name."""
    import torchvision.models

    return torchvision.models.get_model_weights(model_name).COCO_V1.url


def torchvision_labels_to_contiguous(labels: np.ndarray) -> np.ndarray:
    """torchvision COCO labels (0..90) -> contiguous class indices 0..79; background, unused ids and
    anything out of range become -1."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    contiguous = np.full(labels.shape, -1, dtype=np.int64)
    in_range = (labels >= 0) & (labels < NUM_TORCHVISION_DETECTION_CLASSES)
    contiguous[in_range] = TORCHVISION_LABEL_TO_CONTIGUOUS[labels[in_range]]
    return contiguous


def torchvision_output_to_detections(output: dict[str, torch.Tensor]) -> FrameDetections:
    """One image's torchvision detection output -> FrameDetections (keypoints when the model has them)."""
    labels = torchvision_labels_to_contiguous(output["labels"].cpu().numpy())
    scores = output["scores"].float().cpu().numpy()
    if "keypoints" not in output:
        return FrameDetections(labels=labels, scores=scores)
    keypoints_xy = output["keypoints"][..., :2].float().cpu().numpy()  # (D, 17, 2); [..., 2] is always 1
    keypoint_logits = output["keypoints_scores"].float().cpu().numpy()  # (D, 17) heatmap logits
    return FrameDetections(
        labels=labels,
        scores=scores,
        keypoints_xy=keypoints_xy,
        keypoint_confidence=torchvision_keypoint_confidence(keypoint_logits),
    )


class TorchvisionDetector:
    """A frozen torchvision R-CNN; call it on uint8 (N, H, W, 3) frames, get one FrameDetections per frame."""

    def __init__(
        self,
        model_name: str,
        weights: str | None,
        device: torch.device,
        min_size: int,
        max_size: int,
        score_threshold: float,
        teacher_name: str,
        max_detections: int = 100,
    ):
        import torchvision.models

        known = TORCHVISION_OBJECT_DETECTORS + TORCHVISION_KEYPOINT_DETECTORS
        if model_name not in known:
            raise ConfigError(
                f"teacher {teacher_name}: unknown torchvision detector {model_name!r}; "
                f"choose one of: {', '.join(known)}"
            )
        self.model_name = model_name
        self.device = device
        self.weights_url = torchvision_detector_weights_url(model_name)
        keypoint_model = model_name in TORCHVISION_KEYPOINT_DETECTORS
        # The file first: a missing one fails before the model is built. The torch hub cache, filled on first use.
        path = None if weights == RANDOM_WEIGHTS else fetch_torch_hub_file(self.weights_url, teacher_name, weights=weights)
        with torch.random.fork_rng(devices=[]):  # built on the CPU: the seed fixes weights="random" on any device
            torch.manual_seed(RANDOM_INIT_SEED)
            network = torchvision.models.get_model(
                model_name,
                weights=None,
                weights_backbone=None,
                num_classes=2 if keypoint_model else NUM_TORCHVISION_DETECTION_CLASSES,
                min_size=min_size,
                max_size=max_size,
                box_score_thresh=score_threshold,
                box_detections_per_img=max_detections,
                **({"num_keypoints": NUM_COCO_KEYPOINTS} if keypoint_model else {}),
            )
        self.weights_sha256 = RANDOM_INIT_SHA256 if path is None else load_weights_into(network, path, teacher_name)
        self.mean = tuple(float(value) for value in network.transform.image_mean)
        self.std = tuple(float(value) for value in network.transform.image_std)
        self.model = freeze(network).to(device)

    def __call__(self, frames: np.ndarray) -> list[FrameDetections]:
        images = frames_to_tensor(frames, self.device)  # (N, 3, H, W) in 0..1; the model normalises and resizes
        outputs = self.model(list(images))
        # Boxes and keypoints come back in the input frame's pixel coordinates.
        return [torchvision_output_to_detections(output) for output in outputs]
