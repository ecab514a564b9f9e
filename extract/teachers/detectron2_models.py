"""Detectron2 model-zoo detectors (the paper's teachers came from Detectron) as frozen, batched models.

Detectron2 is not on PyPI; users install it from its official repository. This module imports it only
when a Detectron2 backend is built. Weights come from `weights=FILE` or the file Detectron2's own cache
would hold for the model-zoo URL (`$FVCORE_CACHE` or `~/.torch/iopath_cache`, then the URL's path); we
never download. Preprocessing is DefaultPredictor's, applied to a whole batch: RGB -> the model's input
format, ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST), outputs rescaled to the original frame.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from extract.teachers.base import freeze
from extract.teachers.coco_classes import NUM_COCO_KEYPOINTS
from extract.teachers.detections import FrameDetections
from extract.teachers.keypoint_coordinates import detectron2_keypoint_confidence
from pipeline.weights.files import RANDOM_INIT_SHA256, RANDOM_WEIGHTS, iopath_cache_path, resolve_weights_file
from pipeline.errors import ConfigError
from pipeline.hashing import sha256_file

logger = logging.getLogger(__name__)

DETECTRON2_OBJECTS_CONFIG = "COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml"
DETECTRON2_KEYPOINTS_CONFIG = "COCO-Keypoints/keypoint_rcnn_R_50_FPN_3x.yaml"


def _field(instances, name: str):
    """A field of a Detectron2 `Instances` (or any object with the same attributes), as numpy."""
    value = getattr(instances, name, None)
    if value is None:
        return None
    if hasattr(value, "tensor"):  # Boxes / Keypoints wrappers
        value = value.tensor
    if isinstance(value, torch.Tensor):
        return value.detach().float().cpu().numpy() if value.is_floating_point() else value.detach().cpu().numpy()
    return np.asarray(value)


def detectron2_instances_to_detections(instances) -> FrameDetections:
    """Detectron2 `Instances` (scores, pred_classes in contiguous 0..79, optional pred_keypoints
    (D, 17, 3) = x, y, spatial-softmax probability) -> FrameDetections."""
    scores = _field(instances, "scores").astype(np.float32).reshape(-1)
    labels = _field(instances, "pred_classes").astype(np.int64).reshape(-1)
    keypoints = _field(instances, "pred_keypoints")
    if keypoints is None:
        return FrameDetections(labels=labels, scores=scores)
    if keypoints.size:
        keypoints = keypoints.astype(np.float32).reshape(len(scores), -1, 3)  # (D, 17, 3)
    else:  # nobody detected; reshape(0, -1, 3) cannot infer the 17
        keypoints = np.zeros((0, NUM_COCO_KEYPOINTS, 3), np.float32)
    return FrameDetections(
        labels=labels,
        scores=scores,
        keypoints_xy=keypoints[..., :2],
        keypoint_confidence=detectron2_keypoint_confidence(keypoints[..., 2]),
    )


class Detectron2Detector:
    """A frozen Detectron2 model-zoo model; call it on uint8 (N, H, W, 3) RGB frames."""

    def __init__(
        self,
        config_path: str,
        weights: str | None,
        device: torch.device,
        min_size: int,
        max_size: int,
        score_threshold: float,
        teacher_name: str,
        max_detections: int = 100,
    ):
        from detectron2 import model_zoo
        from detectron2.checkpoint import DetectionCheckpointer
        from detectron2.data import transforms
        from detectron2.modeling import build_model

        try:
            config = model_zoo.get_config(config_path, trained=False)
        except RuntimeError as error:
            raise ConfigError(
                f"teacher {teacher_name}: {config_path!r} is not a Detectron2 model-zoo config ({error})"
            ) from None
        config.MODEL.DEVICE = str(device)
        config.MODEL.ROI_HEADS.SCORE_THRESH_TEST = score_threshold
        config.TEST.DETECTIONS_PER_IMAGE = max_detections
        config.INPUT.MIN_SIZE_TEST = min_size
        config.INPUT.MAX_SIZE_TEST = max_size
        self.config_path = config_path
        self.weights_url = model_zoo.get_checkpoint_url(config_path)
        self.input_format = config.INPUT.FORMAT
        self.resize = transforms.ResizeShortestEdge([min_size, min_size], max_size)
        network = build_model(config)
        if weights == RANDOM_WEIGHTS:
            self.weights_sha256 = RANDOM_INIT_SHA256
        else:
            path = resolve_weights_file(weights, iopath_cache_path(self.weights_url), self.weights_url, teacher_name)
            DetectionCheckpointer(network).load(str(path))
            self.weights_sha256 = sha256_file(path)
        pixel_mean = np.asarray(config.MODEL.PIXEL_MEAN, dtype=np.float64) / 255.0
        pixel_std = np.asarray(config.MODEL.PIXEL_STD, dtype=np.float64) / 255.0
        if self.input_format == "BGR":  # report them in RGB order like every other teacher
            pixel_mean, pixel_std = pixel_mean[::-1], pixel_std[::-1]
        self.mean = tuple(float(value) for value in pixel_mean)
        self.std = tuple(float(value) for value in pixel_std)
        self.model = freeze(network)

    def __call__(self, frames: np.ndarray) -> list[FrameDetections]:
        inputs = []
        for frame in frames:
            image = frame[:, :, ::-1] if self.input_format == "BGR" else frame
            height, width = image.shape[:2]
            resized = self.resize.get_transform(image).apply_image(image)
            tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)).astype("float32"))
            inputs.append({"image": tensor, "height": height, "width": width})
        outputs = self.model(inputs)  # rescaled to (height, width) by the model's postprocessing
        return [detectron2_instances_to_detections(output["instances"].to("cpu")) for output in outputs]
