"""The teacher registry and every teacher, run for real: shipped weights where a package has them,
random weights (at small input sizes) where the weights cannot be had offline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import skimage.data
import torch

from distinit.extract.teachers import MissingWeightsError, create_teacher, list_teachers, teacher_options
from distinit.pipeline.weights.lite0 import packaged_lite0_weights_path
from distinit.pipeline.shards.format import KEYPOINT_GRID_ATTRIBUTE as HEATMAP_GRID_ATTRIBUTE, KEYPOINT_SIGMA_ATTRIBUTE as HEATMAP_SIGMA_ATTRIBUTE
from distinit.pipeline.errors import ConfigError, DistinitError
from distinit.pipeline.hashing import sha256_file

SMALL_DETECTOR = {"min_size": 96, "max_size": 128}


def _assert_frozen(teacher) -> None:
    assert not teacher.model.training
    assert not any(parameter.requires_grad for parameter in teacher.model.parameters())


def _small_frames(count: int = 2) -> np.ndarray:
    return np.stack([skimage.data.astronaut()[::4, ::4]] * count)  # (count, 128, 128, 3)


# ---------------------------------------------------------------- registry


def test_registry_lists_every_teacher():
    assert list_teachers() == [
        "clip",
        "coco-keypoints",
        "coco-objects",
        "dinov2",
        "imagenet-efficientnet-lite0",
        "imagenet-torchvision",
        "mediapipe-pose",
        "places365",
    ]
    assert teacher_options("coco-objects")["confident_threshold"] == 0.5


def test_unknown_teacher_names_the_known_ones():
    with pytest.raises(ConfigError, match="unknown teacher 'imagenet-vgg'.*imagenet-efficientnet-lite0"):
        create_teacher("imagenet-vgg")


def test_unknown_or_mistyped_option_is_an_error():
    with pytest.raises(ConfigError, match="has no option temperature; its options are: batch_size"):
        create_teacher("imagenet-efficientnet-lite0", temperature=2.0)
    with pytest.raises(ConfigError, match="grid='fourteen' is not of type int"):
        create_teacher("coco-keypoints", weights="random", grid="fourteen")
    with pytest.raises(ConfigError, match="unknown torchvision classifier 'resnet7'"):
        create_teacher("imagenet-torchvision", model="resnet7", weights="random")
    with pytest.raises(ConfigError, match="unknown detection backend 'yolo'"):
        create_teacher("coco-objects", backend="yolo", weights="random")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_cuda_without_a_gpu_is_a_one_line_error():
    with pytest.raises(DistinitError, match="pass --device cpu"):
        create_teacher("imagenet-torchvision", model="resnet18", weights="random", device="cuda")


# ---------------------------------------------------------------- ImageNet, real weights


@pytest.fixture(scope="module")
def efficientnet(request):
    import os

    return create_teacher("imagenet-efficientnet-lite0", device=os.environ.get("DISTINIT_TEST_DEVICE", "cpu"))


def _top3(teacher, image: np.ndarray) -> list[str]:
    logits = teacher(image[None])["logits"][0]
    names = teacher.output_spec("logits").class_names
    return [names[index] for index in np.argsort(-logits)[:3]]


def test_efficientnet_lite0_recognises_a_cat_and_an_espresso(efficientnet):
    assert {"tabby", "tiger cat", "Egyptian cat"} & set(_top3(efficientnet, skimage.data.chelsea()))
    assert {"espresso", "cup"} & set(_top3(efficientnet, skimage.data.coffee()))


def test_efficientnet_lite0_is_frozen_and_describes_itself(efficientnet):
    _assert_frozen(efficientnet)
    assert efficientnet.weights_sha256 == sha256_file(packaged_lite0_weights_path())
    description = json.loads(json.dumps(efficientnet.describe()))
    assert description["mean"] == [0.498] * 3 and description["std"] == [0.502] * 3
    assert description["input_size"] == 224 and description["decode_short_side"] == 256
    (logits_spec,) = description["outputs"]
    assert logits_spec["kind"] == "logits" and logits_spec["shape"] == [1000] and logits_spec["dtype"] == "float16"
    assert len(logits_spec["class_names"]) == 1000 and logits_spec["class_names"][281] == "tabby"


def test_efficientnet_batches_match_single_frames(efficientnet):
    frames = np.stack([skimage.data.chelsea()[:256, :400], skimage.data.coffee()[:256, :400]])
    efficientnet.batch_size = 1  # internal chunking must not change results
    one_at_a_time = efficientnet(frames)["logits"]
    efficientnet.batch_size = 32
    batched = efficientnet(frames)["logits"]
    assert batched.shape == (2, 1000) and batched.dtype == np.float32
    np.testing.assert_allclose(batched, one_at_a_time, atol=1e-3)
    assert efficientnet(frames[:0])["logits"].shape == (0, 1000)


# ---------------------------------------------------------------- the evaluation view


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("height,width,resize_size,crop_size", [
    (256, 340, 224, 224),  # a Kinetics/HMDB frame: long side 297.5 -> 297, where rounding gave 298
    (256, 340, 256, 224),  # no resize, only the crop
    (340, 256, 224, 224),  # portrait
    (240, 427, 256, 224),  # upscaled, long side 455.47 -> 455: crop corner 115.5 -> 116 (rounded half to even)
    (256, 341, 240, 224),  # long side 319.69 -> 319 (not 320), crop corner 47.5 -> 48 (floor gave 47)
])
def test_view_matches_torchvision_resize_and_center_crop(height, width, resize_size, crop_size, interpolation):
    """The teachers' view is the reference transform's to the pixel: torchvision's Resize(short side) +
    CenterCrop, which the teachers' own evaluation code (and timm, open_clip, DINOv2 through PIL) uses."""
    from torchvision.transforms import v2

    from distinit.extract.teachers.base import frames_to_tensor, resize_short_side_and_center_crop

    frames = np.random.default_rng(2).integers(0, 256, (1, height, width, 3), dtype=np.uint8)
    images = frames_to_tensor(frames, torch.device("cpu"))
    ours = resize_short_side_and_center_crop(images, resize_size, crop_size, interpolation)
    reference = v2.Compose([
        v2.ToDtype(torch.float32, scale=True),
        v2.Resize(resize_size, interpolation=v2.InterpolationMode(interpolation), antialias=True),
        v2.CenterCrop(crop_size),
    ])(torch.from_numpy(frames).permute(0, 3, 1, 2))
    assert ours.shape == reference.shape == (1, 3, crop_size, crop_size)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)


@pytest.mark.parametrize("height,width,resize_size,crop_size", [
    (256, 456, 256, 224),  # 16:9 as decoded for the teachers: columns 116..340 (crop corner 116, half to even)
    (256, 340, 224, 224),  # long side truncated to 297, corner 36.5 -> 36
    (340, 256, 224, 224),  # portrait
    (256, 341, 240, 224),  # long side 319, corner 47.5 -> 48
    (224, 224, 224, 224),  # the whole frame
])
def test_view_box_is_the_part_torchvision_center_crop_keeps(height, width, resize_size, crop_size):
    """The box stage one stores is the crop torchvision takes: its resized size (Resize) and corner (CenterCrop,
    read off an image of column and row numbers), as fractions of the resized frame, which is all of the frame."""
    from torchvision.transforms import v2

    from distinit.extract.teachers.base import center_crop_view_box

    resized = v2.Resize(resize_size, antialias=True)(torch.zeros(1, height, width))
    new_height, new_width = resized.shape[-2:]
    rows, columns = torch.meshgrid(torch.arange(new_height), torch.arange(new_width), indexing="ij")
    kept = v2.CenterCrop(crop_size)(torch.stack([rows, columns]))  # (2, crop, crop) of row and column numbers
    top, left = int(kept[0, 0, 0]), int(kept[1, 0, 0])
    expected = (left / new_width, top / new_height, (left + crop_size) / new_width, (top + crop_size) / new_height)
    assert center_crop_view_box(height, width, resize_size, crop_size) == expected


def _cropping_teachers():
    """(teacher, module whose crop call it makes) of every teacher that centre-crops and builds offline."""
    from distinit.extract.teachers import imagenet_efficientnet, imagenet_torchvision, places365

    return [
        (create_teacher("imagenet-efficientnet-lite0"), imagenet_efficientnet),
        (create_teacher("imagenet-torchvision", model="resnet18", weights="random"), imagenet_torchvision),
        (create_teacher("places365", arch="resnet18", weights="random"), places365),
    ]


def test_each_teacher_records_the_box_of_the_crop_it_takes(monkeypatch):
    from distinit.extract.teachers.base import center_crop_view_box, resize_short_side_and_center_crop

    frames = np.zeros((1, 72, 128, 3), dtype=np.uint8)  # 16:9, as it might reach a teacher
    for teacher, module in _cropping_teachers():
        calls = []
        monkeypatch.setattr(module, "resize_short_side_and_center_crop",
                            lambda images, *view: calls.append(view) or resize_short_side_and_center_crop(images, *view))
        teacher(frames)
        (resize_size, crop_size, *_), = calls
        box = teacher.view_box(72, 128)
        assert box == center_crop_view_box(72, 128, resize_size, crop_size), teacher.name
        assert 0 < box[0] < box[2] < 1 and 0 < box[1] < box[3] < 1, teacher.name  # a centre square of a wide frame
    detector = create_teacher("coco-objects", backend="torchvision", weights="random", **SMALL_DETECTOR)
    assert detector.view_box(72, 128) == (0.0, 0.0, 1.0, 1.0)


# ---------------------------------------------------------------- ImageNet, torchvision


def test_torchvision_classifier_with_random_weights():
    teacher = create_teacher("imagenet-torchvision", model="resnet18", weights="random")
    _assert_frozen(teacher)
    logits = teacher(_small_frames(3))["logits"]
    assert logits.shape == (3, 1000) and np.isfinite(logits).all()
    assert teacher.weights_sha256 == "random-init"
    assert teacher.mean == (0.485, 0.456, 0.406) and teacher.input_size == 224


def test_torchvision_classifier_offline_without_weights_names_the_hub_file(tmp_path, monkeypatch):
    # Online, the file would be downloaded (tests/test_weights_download.py); offline, the error says where to put it.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("DISTINIT_OFFLINE", "1")
    expected = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(MissingWeightsError) as caught:
        create_teacher("imagenet-torchvision", model="resnet18")
    message = str(caught.value)
    assert "\n" not in message and str(expected) in message and "offline (DISTINIT_OFFLINE=1)" in message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message


def test_torchvision_classifier_loads_the_hub_cache_and_rejects_a_wrong_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    import torchvision

    cached = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), cached)
    teacher = create_teacher("imagenet-torchvision", model="resnet18")
    assert teacher.weights_sha256 == sha256_file(cached)
    with pytest.raises(DistinitError, match="does not fit the model"):
        create_teacher("imagenet-torchvision", model="resnet34", weights=str(cached))
    with pytest.raises(MissingWeightsError, match="does not exist"):
        create_teacher("imagenet-torchvision", model="resnet18", weights=str(tmp_path / "nothing.pth"))


# ---------------------------------------------------------------- COCO objects and keypoints (torchvision)


def test_coco_objects_torchvision_with_random_weights():
    # score_threshold 0 keeps the (unconfident) detections of an untrained head, so the mapping runs.
    options = {"score_threshold": 0.0, "confident_threshold": 0.02, **SMALL_DETECTOR}
    teacher = create_teacher("coco-objects", backend="torchvision", weights="random", **options)
    _assert_frozen(teacher.detector)
    outputs = teacher(_small_frames(2))
    scores, counts = outputs["scores"], outputs["num_confident"]
    assert scores.shape == (2, 80) and scores.dtype == np.float32
    assert counts.shape == (2,) and counts.dtype == np.int16
    assert (scores >= 0).all() and (scores <= 1).all() and scores.max() > 0
    # every class whose best score is confident contributed at least one confident detection
    assert ((scores >= 0.02).sum(axis=1) <= counts).all()
    assert teacher.describe()["config"]["model"] == "fasterrcnn_resnet50_fpn"


def test_coco_objects_missing_weights_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(MissingWeightsError, match="fasterrcnn_resnet50_fpn_coco-258fb6c6.pth; download https://"):
        create_teacher("coco-objects", backend="torchvision", **SMALL_DETECTOR)


POSE_FIELDS = [("keypoints", "keypoints", [17, 3], "float16"), ("person_present", "flag", [], "uint8")]


def _pose_fields(teacher) -> list[tuple]:
    """What a pose teacher writes, as stage two reads it: names, kinds, shapes, dtypes and heatmap settings."""
    described = teacher.describe()["outputs"]
    assert described[0]["attributes"][HEATMAP_GRID_ATTRIBUTE] == teacher.grid
    assert described[0]["attributes"][HEATMAP_SIGMA_ATTRIBUTE] == teacher.sigma
    return [(output["name"], output["kind"], output["shape"], output["dtype"]) for output in described]


def _assert_keypoint_rows(outputs: dict, frames: int) -> None:
    keypoints, present = outputs["keypoints"], outputs["person_present"]
    assert keypoints.shape == (frames, 17, 3) and keypoints.dtype == np.float32 and np.isfinite(keypoints).all()
    assert present.shape == (frames,) and present.dtype == np.uint8
    assert ((keypoints[..., 2] >= 0) & (keypoints[..., 2] <= 1)).all()
    assert _nobody(keypoints[present == 0])  # nobody: every keypoint NOWHERE, confidence 0


def test_coco_keypoints_torchvision_with_random_weights():
    options = {"person_threshold": 0.0, "grid": 8, **SMALL_DETECTOR}
    teacher = create_teacher("coco-keypoints", backend="torchvision", weights="random", **options)
    assert _pose_fields(teacher) == POSE_FIELDS
    outputs = teacher(_small_frames(1))
    _assert_keypoint_rows(outputs, 1)
    assert outputs["person_present"].tolist() == [1]
    # Coordinates are fractions of the frame (a keypoint's box may reach a little past the frame's edge).
    assert ((outputs["keypoints"][..., :2] > -0.1) & (outputs["keypoints"][..., :2] < 1.1)).all()
    # nobody reaches a threshold of 1: all-zero keypoints, flag 0
    teacher.person_threshold = 1.0
    outputs = teacher(_small_frames(1))
    assert outputs["person_present"].tolist() == [0] and _nobody(outputs["keypoints"])


def test_explicit_detectron2_backend_without_detectron2_says_how_to_install(monkeypatch):
    import distinit.extract.teachers.detections as detections

    monkeypatch.setattr(detections, "detectron2_is_installed", lambda: False)  # also where CI installed it
    with pytest.raises(DistinitError, match="detectron2 is not importable; install Detectron2"):
        create_teacher("coco-objects", backend="detectron2", weights="random")
    assert create_teacher("coco-objects", weights="random", **SMALL_DETECTOR).backend == "torchvision"


# ---------------------------------------------------------------- Detectron2 (when installed)
# More of it, run for real (DefaultPredictor, BGR, empty frames, the model-zoo cache, extract): test_detectron2_teachers.py.


@pytest.mark.parametrize("teacher_name", ["coco-objects", "coco-keypoints"])
def test_detectron2_backend_runs_when_installed(teacher_name):
    pytest.importorskip("detectron2")
    teacher = create_teacher(teacher_name, backend="detectron2", weights="random", **SMALL_DETECTOR)
    outputs = teacher(_small_frames(1))
    for spec in teacher.outputs:
        assert outputs[spec.name].shape == (1, *spec.shape)
    assert teacher.weights_sha256 == "random-init"
    if teacher_name == "coco-keypoints":  # the same fields as the torchvision and MediaPipe backends
        assert _pose_fields(teacher) == POSE_FIELDS
        _assert_keypoint_rows(outputs, 1)


def test_detectron2_missing_weights_names_the_cache_file(tmp_path, monkeypatch):
    pytest.importorskip("detectron2")
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path))  # and offline, as every test: nothing is downloaded
    with pytest.raises(MissingWeightsError, match=str(tmp_path / "detectron2" / "COCO-Detection")):
        create_teacher("coco-objects", backend="detectron2", **SMALL_DETECTOR)


# ---------------------------------------------------------------- MediaPipe BlazePose (optional extra)


@pytest.fixture(scope="module")
def blazepose():
    pytest.importorskip("mediapipe")
    teacher = create_teacher("mediapipe-pose")
    yield teacher
    teacher.close()


def test_mediapipe_finds_the_astronaut_with_plausible_keypoints(blazepose):
    astronaut = skimage.data.astronaut()  # 512 x 512, a person from the waist up
    outputs = blazepose(astronaut[None])
    assert outputs["person_present"].tolist() == [1]
    assert _pose_fields(blazepose) == POSE_FIELDS
    _assert_keypoint_rows(outputs, 1)
    heights = outputs["keypoints"][0, :, 1]  # y / frame height
    nose, left_shoulder, right_shoulder, left_hip = heights[0], heights[5], heights[6], heights[11]
    assert nose < 0.5 and nose < min(left_shoulder, right_shoulder)
    assert max(left_shoulder, right_shoulder) < 8 / 14 and left_hip > nose  # shoulders in the upper rows, hips below
    assert blazepose.describe()["backend"] == "mediapipe"


def test_mediapipe_sees_nobody_in_an_empty_frame(blazepose):
    outputs = blazepose(np.full((1, 240, 320, 3), 127, np.uint8))
    assert outputs["person_present"].tolist() == [0] and _nobody(outputs["keypoints"])


def test_mediapipe_missing_says_which_extra_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def import_without_mediapipe(name, *args, **kwargs):
        if name == "mediapipe" or name.startswith("mediapipe."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", import_without_mediapipe)
    with pytest.raises(DistinitError, match=r"pip install distinit\[pose\]"):
        create_teacher("mediapipe-pose")


def _nobody(keypoints) -> bool:
    """Rows of a frame with nobody in it: every keypoint at NOWHERE (-1, -1) with confidence 0."""
    keypoints = np.asarray(keypoints, dtype=np.float32)
    return bool((keypoints[..., :2] == -1).all() and not keypoints[..., 2].any())
