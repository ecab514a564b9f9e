"""The Detectron2 backends of coco-objects and coco-keypoints, run for real with random weights: the model-zoo
models fed as DefaultPredictor feeds them (BGR), the same outputs as the torchvision backend, frames with
nobody in them, model-zoo checkpoints read from iopath's cache, and an extract run end to end.
Skipped only where Detectron2 is not importable (CI installs shared/wheels' build of it)."""

from __future__ import annotations

import pickle
import socket

import numpy as np
import pytest
import skimage.data
import torch
from click.testing import CliRunner

pytest.importorskip("detectron2")

from dataset_fixtures import make_tiny_video  # noqa: E402
from distinit.extract.teachers import MissingWeightsError, create_teacher  # noqa: E402
from distinit.extract.teachers.coco_keypoints import CocoKeypointsTeacher  # noqa: E402
from distinit.extract.teachers.coco_objects import CocoObjectsTeacher  # noqa: E402
from distinit.extract.teachers.detectron2_models import (  # noqa: E402
    DETECTRON2_CHECKPOINT_URLS,
    DETECTRON2_KEYPOINTS_CONFIG,
    DETECTRON2_OBJECTS_CONFIG,
    RANDOM_INIT_SEED,
)
from distinit.pipeline.cli import main  # noqa: E402
from distinit.pipeline.errors import DistinitError  # noqa: E402
from distinit.pipeline.hashing import sha256_file  # noqa: E402
from distinit.pipeline.shards import TargetStore, verify  # noqa: E402
from distinit.pipeline.weights.files import iopath_cache_path  # noqa: E402

# R50-FPN models are heavy on a CPU: tiny frames, tested at a 128-px short side.
SMALL = {"min_size": 128, "max_size": 192, "batch_size": 2}


def _frames(count: int = 2) -> np.ndarray:
    """(count, 96, 128, 3) uint8: the astronaut photo, smaller than the test size so the model rescales back."""
    return np.stack([skimage.data.astronaut()[::4, ::4][16:112]] * count)


def _nobody(keypoints: np.ndarray) -> bool:
    return bool((keypoints[..., :2] == -1).all() and not keypoints[..., 2].any())


@pytest.fixture(scope="module")
def keypoint_teachers() -> dict:
    """coco-keypoints on both backends; person_threshold 0 so any person a random model finds is the target."""
    return {backend: create_teacher("coco-keypoints", backend=backend, weights="random", person_threshold=0.0, **SMALL)
            for backend in ("detectron2", "torchvision")}


# score_threshold 0 keeps the detections of an untrained head, so the mapping to targets runs.
OBJECT_OPTIONS = {"score_threshold": 0.0, "confident_threshold": 0.9, **SMALL}


@pytest.fixture(scope="module")
def object_teacher():
    return create_teacher("coco-objects", backend="detectron2", weights="random", **OBJECT_OPTIONS)


# ---------------------------------------------------------------- the same targets as the torchvision backend


def test_keypoints_mean_what_the_torchvision_backend_writes(keypoint_teachers):
    detectron2_teacher, torchvision_teacher = keypoint_teachers["detectron2"], keypoint_teachers["torchvision"]
    assert detectron2_teacher.backend == "detectron2" and detectron2_teacher.detector.model_name == DETECTRON2_KEYPOINTS_CONFIG
    assert detectron2_teacher.describe()["outputs"] == torchvision_teacher.describe()["outputs"]
    frames = _frames()
    for teacher in (detectron2_teacher, torchvision_teacher):
        outputs = teacher(frames)
        keypoints, present = outputs["keypoints"], outputs["person_present"]
        assert keypoints.shape == (2, 17, 3) and keypoints.dtype == np.float32 and np.isfinite(keypoints).all()
        assert present.dtype == np.uint8 and present.tolist() == [1, 1]
        # The target is the best person's keypoints, in pixels of the full frame divided by its width and height.
        detections = teacher.detector(frames[:1])[0]
        best = int(np.argmax(detections.scores))
        expected_xy = detections.keypoints_xy[best] / np.array([128.0, 96.0])
        np.testing.assert_allclose(keypoints[0, :, :2], expected_xy, atol=1e-5)
        np.testing.assert_allclose(keypoints[0, :, 2], detections.keypoint_confidence[best], atol=1e-6)
        assert ((keypoints[..., 2] >= 0) & (keypoints[..., 2] <= 1)).all()
        assert ((keypoints[..., :2] > -0.1) & (keypoints[..., :2] < 1.1)).all()


def test_objects_hold_each_class_best_score(object_teacher):
    torchvision_teacher = create_teacher("coco-objects", backend="torchvision", weights="random", **OBJECT_OPTIONS)
    assert object_teacher.describe()["outputs"] == torchvision_teacher.describe()["outputs"]
    assert object_teacher.detector.model_name == DETECTRON2_OBJECTS_CONFIG
    frames = _frames()
    outputs = object_teacher(frames)
    scores, counts = outputs["scores"], outputs["num_confident"]
    assert scores.shape == (2, 80) and scores.dtype == np.float32
    assert counts.shape == (2,) and counts.dtype == np.int16
    detections = object_teacher.detector(frames[:1])[0]
    assert len(detections.labels) > 0 and ((detections.labels >= 0) & (detections.labels < 80)).all()
    expected = np.zeros(80, np.float32)
    np.maximum.at(expected, detections.labels, detections.scores)
    np.testing.assert_allclose(scores[0], expected, atol=1e-6)
    assert counts[0] == int((detections.scores >= 0.9).sum())


def test_a_frame_without_detections_gives_empty_targets(keypoint_teachers, monkeypatch):
    teacher = keypoint_teachers["detectron2"]
    # No box scores above 1: the model returns no instances, and (0, 17, 3) keypoints, for every frame.
    monkeypatch.setattr(teacher.detector.model.roi_heads.box_predictor, "test_score_thresh", 1.0)
    black = np.zeros((2, 96, 128, 3), np.uint8)
    detections = teacher.detector(black)[0]
    assert detections.labels.shape == (0,) and detections.keypoints_xy.shape == (0, 17, 2)
    outputs = teacher(black)
    assert outputs["person_present"].tolist() == [0, 0] and _nobody(outputs["keypoints"])
    objects = create_teacher("coco-objects", backend="detectron2", weights="random", score_threshold=1.0, **SMALL)
    outputs = objects(black)
    assert not outputs["scores"].any() and outputs["num_confident"].tolist() == [0, 0]


# ---------------------------------------------------------------- the predictor path


def test_detector_gives_the_instances_default_predictor_gives(keypoint_teachers, monkeypatch):
    from detectron2.engine import DefaultPredictor

    import distinit.extract.teachers.detectron2_models as detectron2_models

    detector = keypoint_teachers["detectron2"].detector
    predictor = DefaultPredictor(detector.config.clone())  # MODEL.WEIGHTS is empty: copy ours in
    predictor.model.load_state_dict(detector.model.state_dict())
    seen = []
    convert = detectron2_models.detectron2_instances_to_detections
    monkeypatch.setattr(detectron2_models, "detectron2_instances_to_detections",
                        lambda instances: seen.append(instances) or convert(instances))
    frame = _frames(1)[0]
    detector(frame[None])
    with torch.inference_mode():
        expected = predictor(np.ascontiguousarray(frame[:, :, ::-1]))["instances"]  # DefaultPredictor reads BGR
    ours = seen[0]
    assert ours.image_size == expected.image_size == (96, 128) and len(ours) == len(expected) > 0
    torch.testing.assert_close(ours.pred_boxes.tensor, expected.pred_boxes.tensor)
    torch.testing.assert_close(ours.scores, expected.scores)
    torch.testing.assert_close(ours.pred_keypoints, expected.pred_keypoints)
    assert torch.equal(ours.pred_classes, expected.pred_classes)


def test_model_receives_the_frame_in_its_input_format(keypoint_teachers, monkeypatch):
    detector = keypoint_teachers["detectron2"].detector
    assert detector.input_format == "BGR"  # the R50-FPN model-zoo configs were trained on OpenCV's BGR
    assert detector.mean == pytest.approx((123.675 / 255, 116.28 / 255, 103.53 / 255))  # reported in RGB order
    received = []
    forward = detector.model.forward
    monkeypatch.setattr(detector.model, "forward", lambda inputs: received.append(inputs) or forward(inputs))
    frame = np.empty((1, 64, 80, 3), np.uint8)
    frame[...] = (200, 100, 10)  # R, G, B: one colour survives any resize exactly
    detector(frame)
    image = received[0][0]["image"]  # (3, h, w) float32 as the model reads it
    assert received[0][0]["height"] == 64 and received[0][0]["width"] == 80 and image.shape == (3, 128, 160)
    assert [float(image[channel].mean()) for channel in range(3)] == [10.0, 100.0, 200.0]
    monkeypatch.setattr(detector, "input_format", "RGB")
    detector(frame)
    assert [float(received[1][0]["image"][channel].mean()) for channel in range(3)] == [200.0, 100.0, 10.0]


def test_random_weights_are_one_fixed_initialisation():
    first = create_teacher("coco-objects", backend="detectron2", weights="random", **SMALL)
    torch.manual_seed(RANDOM_INIT_SEED + 1)  # the global seed must not matter
    second = create_teacher("coco-objects", backend="detectron2", weights="random", **SMALL)
    for (name, tensor), other in zip(first.detector.model.state_dict().items(), second.detector.model.state_dict().values()):
        assert torch.equal(tensor, other), name


# ---------------------------------------------------------------- weights


def _model_zoo_checkpoint(model: torch.nn.Module, *, pixel_statistics: bool = False) -> dict:
    """A checkpoint shaped as the 2019 model-zoo files are: numpy arrays under "model", the zoo's author, and the
    anchor generator's cell_anchors.0-4, persistent buffers then; pixel_statistics: also pixel_mean and pixel_std,
    as checkpoints of early Detectron2 releases hold them. Non-persistent now, so state_dict() has none of them."""
    buffers = dict(model.named_buffers())
    saved = [name for name in buffers if "anchor_generator.cell_anchors." in name]
    assert len(saved) == 5 and not any(name in model.state_dict() for name in saved)
    if pixel_statistics:
        saved += ["pixel_mean", "pixel_std"]
    state = {name: tensor.numpy().copy() for name, tensor in model.state_dict().items()}
    state.update({name: buffers[name].numpy().copy() for name in saved})
    return {"model": state, "__author__": "Detectron2 Model Zoo"}


def test_model_zoo_checkpoint_in_iopath_cache_loads_offline(tmp_path, monkeypatch, object_teacher):
    """A file in the model zoo's format where Detectron2 caches the zoo's URL loads without the network
    (tests run with DISTINIT_OFFLINE=1) and names the stage key's weights by its sha256."""
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path))
    url = DETECTRON2_CHECKPOINT_URLS[DETECTRON2_OBJECTS_CONFIG]
    cached = iopath_cache_path(url)
    assert cached.parent.parent.parent == tmp_path / "detectron2" / "COCO-Detection"
    (source,) = CocoObjectsTeacher.weights_sources(backend="detectron2")
    assert source.origin == url and source.local_path == cached and not source.present
    checkpoint = _model_zoo_checkpoint(object_teacher.detector.model)
    assert "pixel_mean" not in checkpoint["model"]
    checkpoint["model"]["roi_heads.box_predictor.cls_score.bias"] += 1.5  # a value the random init cannot have
    cached.parent.mkdir(parents=True)
    with open(cached, "wb") as file:
        pickle.dump(checkpoint, file)
    teacher = create_teacher("coco-objects", backend="detectron2", **SMALL)
    assert teacher.weights_sha256 == sha256_file(cached)
    loaded = teacher.detector.model.state_dict()["roi_heads.box_predictor.cls_score.bias"]
    np.testing.assert_array_equal(loaded.numpy(), checkpoint["model"]["roi_heads.box_predictor.cls_score.bias"])
    assert CocoObjectsTeacher.weights_sources(backend="detectron2")[0].present


def test_a_checkpoint_holding_pixel_mean_and_std_loads(tmp_path, object_teacher):
    """Saved while pixel_mean/pixel_std were persistent: Detectron2 reports them as unexpected; they still fit."""
    checkpoint = _model_zoo_checkpoint(object_teacher.detector.model, pixel_statistics=True)
    checkpoint["model"]["roi_heads.box_predictor.bbox_pred.bias"] += 0.25
    path = tmp_path / "early-detectron2.pkl"
    with open(path, "wb") as file:
        pickle.dump(checkpoint, file)
    teacher = create_teacher("coco-objects", backend="detectron2", weights=str(path), **SMALL)
    model = teacher.detector.model
    np.testing.assert_array_equal(model.state_dict()["roi_heads.box_predictor.bbox_pred.bias"].numpy(),
                                  checkpoint["model"]["roi_heads.box_predictor.bbox_pred.bias"])
    config_mean = torch.tensor(teacher.detector.config.MODEL.PIXEL_MEAN).view(-1, 1, 1)
    torch.testing.assert_close(model.pixel_mean, config_mean)  # the model's own, from its config
    assert teacher.weights_sha256 == sha256_file(path)


def test_offline_without_a_cached_checkpoint_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path))
    with pytest.raises(MissingWeightsError) as raised:
        create_teacher("coco-keypoints", backend="detectron2", **SMALL)
    message = str(raised.value)
    cached = iopath_cache_path(DETECTRON2_CHECKPOINT_URLS[DETECTRON2_KEYPOINTS_CONFIG])
    assert "\n" not in message and str(cached) in message and "model_final_a6e10b.pkl" in message
    assert "offline (DISTINIT_OFFLINE=1)" in message and not cached.exists()


def test_a_checkpoint_of_another_model_is_refused(tmp_path, keypoint_teachers):
    foreign = tmp_path / "foreign.pkl"
    with open(foreign, "wb") as file:
        pickle.dump({"model": {"backbone.other.weight": np.zeros(3, np.float32)}, "__author__": "someone"}, file)
    with pytest.raises(DistinitError, match="does not fit the model"):
        create_teacher("coco-objects", backend="detectron2", weights=str(foreign), **SMALL)
    # The keypoint model's own checkpoint, buffers and all, is another model for coco-objects.
    keypoint_model = tmp_path / "keypoint_rcnn.pkl"
    with open(keypoint_model, "wb") as file:
        pickle.dump(_model_zoo_checkpoint(keypoint_teachers["detectron2"].detector.model, pixel_statistics=True), file)
    with pytest.raises(DistinitError, match=r"does not fit the model \(\d+ keys .*e\.g\. 'roi_heads\."):
        create_teacher("coco-objects", backend="detectron2", weights=str(keypoint_model), **SMALL)
    broken = tmp_path / "broken.pkl"
    broken.write_bytes(b"not a pickle")
    with pytest.raises(DistinitError, match="cannot read weights file"):
        create_teacher("coco-objects", backend="detectron2", weights=str(broken), **SMALL)


def test_weights_sources_name_the_backend_auto_chooses(tmp_path, monkeypatch):
    from detectron2 import model_zoo

    for config_path, url in DETECTRON2_CHECKPOINT_URLS.items():
        assert model_zoo.get_checkpoint_url(config_path) == url
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path))
    (automatic,) = CocoKeypointsTeacher.weights_sources()
    assert "backend detectron2, chosen by backend=auto" in automatic.description
    assert automatic.local_path == iopath_cache_path(automatic.origin)
    (torchvision,) = CocoKeypointsTeacher.weights_sources(backend="torchvision")
    assert torchvision.origin.endswith("keypointrcnn_resnet50_fpn_coco-fc266e95.pth")
    (given,) = CocoObjectsTeacher.weights_sources(weights=str(tmp_path / "mine.pkl"))
    assert given.origin == "weights=FILE" and given.local_path == tmp_path / "mine.pkl" and not given.present
    assert CocoObjectsTeacher.weights_sources(weights="random") == ()


# ---------------------------------------------------------------- extract end to end


@pytest.mark.slow
def test_extract_runs_the_detectron2_keypoint_teacher(tmp_path):
    videos = tmp_path / "videos"
    for name in ("a", "b"):
        make_tiny_video(videos / f"{name}.mp4")  # 0.5 s of 32x24 test pattern: one teacher frame each
    result = CliRunner().invoke(main, [
        "extract", "--data", "folder", "--root", str(videos), "--out", str(tmp_path / "targets"),
        "--teachers", "coco-keypoints", "--teacher-option", "coco-keypoints.backend=detectron2",
        "--weights", "coco-keypoints=random", "--teacher-option", "coco-keypoints.min_size=64",
        "--teacher-option", "coco-keypoints.max_size=96", "--teacher-option", "coco-keypoints.person_threshold=0",
        "--shard-count", "1", "--workers", "0", "--no-progress",
    ])
    assert result.exit_code == 0, result.output
    targets_dir = next((tmp_path / "targets" / "folder").glob("*/manifest.json")).parent
    assert verify(targets_dir) == []
    store = TargetStore(targets_dir)
    (described,) = store.teachers
    assert described["backend"] == "detectron2" and described["weights_sha256"] == "random-init"
    assert described["config"]["model"] == DETECTRON2_KEYPOINTS_CONFIG and described["decode_short_side"] == 64
    rows = store.rows_for_video("a")
    keypoints, present = rows["coco-keypoints/keypoints"], rows["coco-keypoints/person_present"]
    assert keypoints.shape == (1, 17, 3) and present.shape == (1,) and np.isfinite(keypoints).all()
    assert set(present.tolist()) <= {0, 1} and ((keypoints[..., 2] >= 0) & (keypoints[..., 2] <= 1)).all()


def test_default_test_size_is_the_same_on_both_backends():
    """Not the frameworks' 800: see extract/teachers/detections.py; it is part of the stage key."""
    torchvision_teacher = create_teacher("coco-keypoints", backend="torchvision", weights="random")
    assert torchvision_teacher.describe()["config"]["min_size"] == torchvision_teacher.decode_short_side == 512
    assert torchvision_teacher.detector.model.transform.min_size == (512,)
    detectron2_teacher = create_teacher("coco-keypoints", backend="detectron2", weights="random")
    assert detectron2_teacher.describe()["config"]["min_size"] == 512
    assert detectron2_teacher.detector.config.INPUT.MIN_SIZE_TEST == 512
    assert tuple(detectron2_teacher.detector.resize.short_edge_length) == (512, 512)


def test_a_refused_download_is_one_line(tmp_path, monkeypatch):
    """Online, Detectron2's own download (iopath) meets a refused connection: one line at once, nothing cached."""
    import distinit.extract.teachers.detectron2_models as detectron2_models

    monkeypatch.delenv("DISTINIT_OFFLINE")
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path))
    with socket.socket() as probe:  # a port nothing listens on once closed (a fixed one may hold a service)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/detectron2/COCO-Detection/model_final.pkl"
    monkeypatch.setitem(detectron2_models.DETECTRON2_CHECKPOINT_URLS, DETECTRON2_OBJECTS_CONFIG, url)
    with pytest.raises(MissingWeightsError) as raised:
        create_teacher("coco-objects", backend="detectron2", **SMALL)
    message = str(raised.value)
    assert "\n" not in message and f"cannot download {url}" in message and str(iopath_cache_path(url)) in message
    assert not iopath_cache_path(url).exists()
