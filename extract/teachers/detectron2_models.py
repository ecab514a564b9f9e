"""Detectron2 model-zoo detectors (the paper's teachers came from Detectron) as frozen, batched models.

Detectron2 is not on PyPI; users install it from its official repository. This module imports it only
when a Detectron2 backend is built. The model is the model-zoo config's (`model_zoo.get_config(...,
trained=False)`), fed the way Detectron2's DefaultPredictor feeds it, for a whole batch: the RGB frame in the
config's INPUT.FORMAT (BGR for the R50-FPN zoo models), ResizeShortestEdge(min_size, max_size), and the
model's own normalisation, padding and postprocessing, which rescales boxes and keypoints to the frame.

Weights: `weights=FILE` (a model-zoo .pkl or a .pth checkpoint), else the model-zoo checkpoint, which
Detectron2's own path manager downloads into iopath's cache (`$FVCORE_CACHE` or `~/.torch/iopath_cache`,
then the URL's path) on first use; a file already there is read without touching the network, and offline
(`--offline`) a missing one is a one-line error naming the file and its URL. Every key of the checkpoint must
fit the model (Detectron2's checkpointer only logs a mismatch and leaves those layers random), except the
buffers older checkpoints saved and the model now takes from its config (keys_not_fitting).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from distinit.extract.teachers.base import freeze
from distinit.extract.teachers.coco_classes import NUM_COCO_KEYPOINTS
from distinit.extract.teachers.detections import FrameDetections
from distinit.extract.teachers.keypoint_coordinates import detectron2_keypoint_confidence
from distinit.pipeline.errors import ConfigError, DistinitError
from distinit.pipeline.hashing import sha256_file
from distinit.pipeline.weights.download import framework_download
from distinit.pipeline.weights.files import RANDOM_INIT_SHA256, RANDOM_WEIGHTS, given_weights_file, iopath_cache_path

logger = logging.getLogger(__name__)

DETECTRON2_OBJECTS_CONFIG = "COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml"
DETECTRON2_KEYPOINTS_CONFIG = "COCO-Keypoints/keypoint_rcnn_R_50_FPN_3x.yaml"
# The default models' checkpoints, as model_zoo.get_checkpoint_url gives them (a test checks they agree), so
# listing where weights come from needs no Detectron2 import (model_zoo imports all of detectron2.modeling).
DETECTRON2_CHECKPOINT_URLS = {
    DETECTRON2_OBJECTS_CONFIG: "https://dl.fbaipublicfiles.com/detectron2/"
    "COCO-Detection/faster_rcnn_R_50_FPN_3x/137849458/model_final_280758.pkl",
    DETECTRON2_KEYPOINTS_CONFIG: "https://dl.fbaipublicfiles.com/detectron2/"
    "COCO-Keypoints/keypoint_rcnn_R_50_FPN_3x/137849621/model_final_a6e10b.pkl",
}
# weights="random" is one fixed initialisation (its stage key says "random-init", so it must give the same targets).
RANDOM_INIT_SEED = 0


def detectron2_checkpoint_url(config_path: str, teacher_name: str) -> str:
    """The model-zoo checkpoint URL of a model-zoo config path."""
    if config_path in DETECTRON2_CHECKPOINT_URLS:
        return DETECTRON2_CHECKPOINT_URLS[config_path]
    from detectron2 import model_zoo

    try:
        return model_zoo.get_checkpoint_url(config_path)
    except RuntimeError as error:
        raise ConfigError(f"teacher {teacher_name}: {config_path!r} has no Detectron2 model-zoo checkpoint ({error})") from None


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


def detectron2_config(config_path: str, device: torch.device, min_size: int, max_size: int,
                      score_threshold: float, max_detections: int, teacher_name: str):
    """The model-zoo config with this teacher's test size, thresholds and device (what DefaultPredictor reads)."""
    from detectron2 import model_zoo

    try:
        config = model_zoo.get_config(config_path, trained=False)
    except RuntimeError as error:
        raise ConfigError(f"teacher {teacher_name}: {config_path!r} is not a Detectron2 model-zoo config ({error})") from None
    config.MODEL.DEVICE = str(device)
    config.MODEL.WEIGHTS = ""  # loaded by load_detectron2_weights, never by whoever reads this config
    config.MODEL.ROI_HEADS.SCORE_THRESH_TEST = score_threshold
    config.TEST.DETECTIONS_PER_IMAGE = max_detections
    config.INPUT.MIN_SIZE_TEST = min_size
    config.INPUT.MAX_SIZE_TEST = max_size
    return config


def build_random_network(config) -> torch.nn.Module:
    """Detectron2's own initialisation, seeded, with each residual branch's last norm zeroed (Goyal et al.'s
    zero-init). Untrained ResNets with frozen (identity) norms add up every branch, so activations and logits
    reach the thousands: box scores saturate at 0 or 1 and keypoint decoding overflows (heatmaps_to_keypoints
    fails its assertion for some seeds). Zeroed branches keep them of order one; random weights only test code."""
    from detectron2.modeling import build_model
    from detectron2.modeling.backbone.resnet import CNNBlockBase

    with torch.random.fork_rng(devices=[]):  # the network is built on the CPU, then moved to its device
        torch.manual_seed(RANDOM_INIT_SEED)
        network = build_model(config)
    with torch.no_grad():
        for block in network.modules():
            if isinstance(block, CNNBlockBase) and hasattr(block, "shortcut"):  # a residual block, not the stem
                last_convolution = getattr(block, "conv3", None) or block.conv2
                if getattr(last_convolution, "norm", None) is not None:
                    last_convolution.norm.weight.zero_()
    return network


def detectron2_weights_file(weights: str | None, url: str, teacher_name: str) -> Path:
    """`weights` (a file that must exist), else the model-zoo checkpoint at `url` in iopath's cache, downloaded
    there first by Detectron2's path manager (what its checkpointer's load(url) does) unless already there."""
    if weights is not None:
        return given_weights_file(weights, teacher_name)
    path = iopath_cache_path(url)
    if path.is_file():  # read as it is, even where the cache is read-only (iopath would fall back to /tmp)
        return path
    from detectron2.utils.file_io import PathManager

    with framework_download(teacher_name, url, path):
        return Path(PathManager.get_local_path(url))


def keys_not_fitting(network: torch.nn.Module, incompatible) -> list[str]:
    """The checkpoint keys that make it another model's, from what Detectron2's checkpointer reports.

    Not counted: an unexpected key naming one of the model's own buffers (the anchor generator's cell_anchors.N,
    pixel_mean, pixel_std). They are non-persistent buffers now, set from the config, but checkpoints written while
    they were persistent hold them: the 2019 model zoo's files the cell anchors, those of early Detectron2 releases
    (users' own models) the pixel statistics too. Detectron2 drops the cell anchors from the unexpected keys but
    the pixel statistics only from the missing ones, so its report alone would refuse such files. Nor a missing
    key whose tensor was loaded under another name (a module used in two places; fvcore filters its warning so).
    """
    from fvcore.common.checkpoint import _filter_reused_missing_keys

    own_buffers = {name for name, _ in network.named_buffers()}
    missing = _filter_reused_missing_keys(network, incompatible.missing_keys) if incompatible.missing_keys else []
    unexpected = [key for key in incompatible.unexpected_keys if key not in own_buffers]
    return [*sorted(missing), *unexpected, *(key for key, _, _ in incompatible.incorrect_shapes)]


def load_detectron2_weights(network: torch.nn.Module, path: Path, teacher_name: str) -> str:
    """Load a checkpoint file into `network` with every key fitting; the file's sha256."""
    not_fitting = keys_not_fitting(network, _load_checkpoint(network, path, teacher_name))
    if not_fitting:
        raise DistinitError(
            f"teacher {teacher_name}: weights file {path} does not fit the model ({len(not_fitting)} keys missing, "
            f"unexpected or of another shape, e.g. {not_fitting[0]!r}); pass the checkpoint of this model"
        )
    logger.info("teacher %s loaded weights from %s", teacher_name, path)
    return sha256_file(path)


def _load_checkpoint(network: torch.nn.Module, path: Path, teacher_name: str):
    """DetectionCheckpointer.load on a local file (model-zoo .pkl or .pth); what did not fit, as it reports it."""
    from detectron2.checkpoint import DetectionCheckpointer

    class ReportingCheckpointer(DetectionCheckpointer):
        """Keeps the keys that did not fit, which Detectron2's checkpointer only logs."""

        incompatible = None

        def _log_incompatible_keys(self, incompatible) -> None:
            self.incompatible = incompatible
            super()._log_incompatible_keys(incompatible)

    checkpointer = ReportingCheckpointer(network)
    try:
        checkpointer.load(str(path))
    except Exception as error:  # pickle, torch and the checkpointer raise several types for foreign files
        raise DistinitError(
            f"teacher {teacher_name}: cannot read weights file {path} ({type(error).__name__}); replace it"
        ) from error
    return checkpointer.incompatible


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
        from detectron2.data import transforms
        from detectron2.modeling import build_model

        self.config = detectron2_config(config_path, device, min_size, max_size, score_threshold, max_detections, teacher_name)
        self.model_name = config_path
        self.weights_url = detectron2_checkpoint_url(config_path, teacher_name)
        self.input_format = self.config.INPUT.FORMAT
        self.resize = transforms.ResizeShortestEdge([min_size, min_size], max_size)  # DefaultPredictor's
        if weights == RANDOM_WEIGHTS:
            network = build_random_network(self.config)
            self.weights_sha256 = RANDOM_INIT_SHA256
        else:  # the file first: a missing one fails before the model is built
            path = detectron2_weights_file(weights, self.weights_url, teacher_name)
            network = build_model(self.config)
            self.weights_sha256 = load_detectron2_weights(network, path, teacher_name)
        pixel_mean = np.asarray(self.config.MODEL.PIXEL_MEAN, dtype=np.float64) / 255.0
        pixel_std = np.asarray(self.config.MODEL.PIXEL_STD, dtype=np.float64) / 255.0
        if self.input_format == "BGR":  # report them in RGB order like every other teacher
            pixel_mean, pixel_std = pixel_mean[::-1], pixel_std[::-1]
        self.mean = tuple(float(value) for value in pixel_mean)
        self.std = tuple(float(value) for value in pixel_std)
        self.model = freeze(network)

    def __call__(self, frames: np.ndarray) -> list[FrameDetections]:
        inputs = []
        for frame in frames:
            image = frame[:, :, ::-1] if self.input_format == "BGR" else frame  # frames arrive RGB
            height, width = image.shape[:2]
            resized = self.resize.get_transform(image).apply_image(image)
            tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)).astype("float32"))  # (3, h, w)
            inputs.append({"image": tensor, "height": height, "width": width})
        outputs = self.model(inputs)  # normalised, padded and batched by the model; rescaled to (height, width)
        return [detectron2_instances_to_detections(output["instances"].to("cpu")) for output in outputs]
