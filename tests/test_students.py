"""Students: shapes per head, no NaN, a gradient for every parameter, flow input, architecture round trip."""

from __future__ import annotations

import pytest
import torch
import torchvision

from distinit.distill.heads import HeadSpec, head_specs_from_teachers
from distinit.distill.students import DistillStudent, create_student, list_students
from distinit.extract.teachers.coco_classes import COCO_CLASS_NAMES
from distinit.pipeline.errors import ConfigError

TEACHERS = [
    {
        "name": "imagenet-efficientnet-lite0",
        "outputs": [{"name": "logits", "shape": [1000], "kind": "logits", "class_names": None}],
    },
    {
        "name": "coco-objects",
        "outputs": [
            {"name": "scores", "shape": [80], "kind": "multilabel_scores", "class_names": list(COCO_CLASS_NAMES)},
            {"name": "num_confident", "shape": [], "kind": "count", "class_names": None},
        ],
    },
    {
        "name": "coco-keypoints",
        "outputs": [
            {"name": "heatmaps", "shape": [17, 14, 14], "kind": "heatmaps", "class_names": None},
            {"name": "person_present", "shape": [], "kind": "flag", "class_names": None},
        ],
    },
    {"name": "clip", "outputs": [{"name": "embedding", "shape": [512], "kind": "embedding", "class_names": None}]},
]
HEADS = head_specs_from_teachers(TEACHERS)
EXPECTED_SHAPES = {
    "imagenet-efficientnet-lite0/logits": (1, 1000),
    "coco-objects/scores": (1, 80),
    "coco-keypoints/heatmaps": (1, 17, 14, 14),
    "clip/embedding": (1, 512),
}
# S3D shrinks time by 8 and space by 32 and its BatchNorm needs > 1 value per channel when training; so does
# resnet18_3d (ResNet-18's stem max-pool: 32 pixels leave layer4 1x1, 4 frames leave it 1, one value per channel).
CLIP_SHAPES = {"s3d": (1, 3, 8, 64, 64), "resnet18_3d": (1, 3, 4, 64, 64)}
DEFAULT_CLIP_SHAPE = (1, 3, 4, 32, 32)
STUDENT_CASES = [
    ("r2plus1d_18", "full"), ("r3d_18", "full"), ("mc3_18", "full"), ("s3d", "full"), ("resnet18_3d", "full"),
    ("r2plus1d_18", "tiny"), ("r3d_18", "tiny"), ("mc3_18", "tiny"), ("resnet18_3d", "tiny"),
]


def _clip(name: str, in_channels: int = 3) -> torch.Tensor:
    batch, _, frames, height, width = CLIP_SHAPES.get(name, DEFAULT_CLIP_SHAPE)
    return torch.randn(batch, in_channels, frames, height, width)


def test_head_specs_from_teachers_one_head_per_soft_output():
    assert [(spec.key, spec.kind, spec.shape, spec.mask_key) for spec in HEADS] == [
        ("imagenet-efficientnet-lite0/logits", "logits", (1000,), None),
        ("coco-objects/scores", "multilabel_scores", (80,), None),
        ("coco-keypoints/heatmaps", "heatmaps", (17, 14, 14), "coco-keypoints/person_present"),
        ("clip/embedding", "embedding", (512,), None),
    ]
    assert HEADS[1].class_names == COCO_CLASS_NAMES
    assert HEADS[2].teacher == "coco-keypoints"


def test_registry_names():
    assert list_students() == ["efficientnet_lite0_3d", "mc3_18", "r2plus1d_18", "r3d_18", "resnet18_3d", "s3d"]
    with pytest.raises(ConfigError, match="unknown student"):
        create_student("resnet50")


@pytest.mark.parametrize("name,width", STUDENT_CASES)
@pytest.mark.parametrize("in_channels", [3, 2])
def test_student_shapes_and_every_parameter_gets_a_gradient(name, width, in_channels):
    student = create_student(name, HEADS, width=width, in_channels=in_channels, dropout=0.1)
    outputs = student(_clip(name, in_channels))
    assert {key: tuple(value.shape) for key, value in outputs.items()} == EXPECTED_SHAPES
    assert all(torch.isfinite(value).all() for value in outputs.values())
    sum(value.sum() for value in outputs.values()).backward()
    for parameter_name, parameter in student.named_parameters():
        assert parameter.grad is not None, parameter_name
        assert torch.isfinite(parameter.grad).all(), parameter_name
    # Some gradient actually flows into the first convolution, through trunk and heads alike.
    first_conv_gradient = next(parameter.grad for parameter in student.trunk.parameters())
    assert first_conv_gradient.abs().sum() > 0
    assert student.features(_clip(name, in_channels)).shape == (outputs["coco-objects/scores"].shape[0], student.feature_dim)


def test_tiny_is_far_smaller_and_s3d_has_no_tiny_width():
    full = sum(parameter.numel() for parameter in create_student("r2plus1d_18").parameters())
    tiny = sum(parameter.numel() for parameter in create_student("r2plus1d_18", width="tiny").parameters())
    assert tiny * 100 < full
    with pytest.raises(ConfigError, match="s3d has no tiny width"):
        create_student("s3d", width="tiny")
    with pytest.raises(ConfigError, match="width"):
        create_student("r3d_18", width="medium")


@pytest.mark.parametrize("name", ["r2plus1d_18", "r3d_18", "mc3_18", "s3d"])
def test_full_trunk_keys_are_torchvisions_without_the_classifier(name):
    reference = getattr(torchvision.models.video, name)(weights=None).state_dict()
    trunk = create_student(name, HEADS).trunk_state_dict()
    classifier = "classifier." if name == "s3d" else "fc."
    assert {key: tuple(value.shape) for key, value in trunk.items()} == {
        key: tuple(value.shape) for key, value in reference.items() if not key.startswith(classifier)
    }


def test_resnet18_3d_is_resnet18_in_3d_at_both_widths():
    """Full width: torchvision resnet18's keys (minus fc), each conv weight one time dimension deeper (3 frames,
    1 for 1x1 convs); tiny: the other trunks' tiny widths, one block per stage. Scratch starts where torchvision
    starts a ResNet (batch-norm statistics included)."""
    expected = {}
    for key, value in torchvision.models.resnet18(weights=None).state_dict().items():
        if value.dim() == 4:  # (O, I, kh, kw) -> (O, I, t, kh, kw)
            expected[key] = (*value.shape[:2], 3 if value.shape[-1] > 1 else 1, *value.shape[2:])
        elif not key.startswith("fc."):
            expected[key] = tuple(value.shape)
    trunk = create_student("resnet18_3d", HEADS).trunk_state_dict()
    assert {key: tuple(value.shape) for key, value in trunk.items()} == expected
    for key, value in trunk.items():
        if key.endswith("running_mean") or key.endswith("running_var"):
            torch.testing.assert_close(value, torch.full_like(value, float(key.endswith("running_var"))))
    tiny = create_student("resnet18_3d", width="tiny").trunk
    stages = [getattr(tiny, f"layer{index}") for index in range(1, 5)]
    assert [tiny.conv1.out_channels] + [stage[0].conv2.out_channels for stage in stages] == [8, 8, 16, 32, 64]
    assert [len(stage) for stage in stages] == [1, 1, 1, 1] and tiny.feature_dim == 64


@pytest.mark.parametrize("name,width", [("r2plus1d_18", "tiny"), ("mc3_18", "full"), ("s3d", "full"),
                                        ("resnet18_3d", "tiny")])
def test_architecture_round_trip(name, width):
    student = create_student(name, HEADS, width=width, in_channels=2, dropout=0.25).eval()
    architecture = student.architecture()
    assert set(architecture) == {"name", "width", "in_channels", "heads", "dropout", "input_normalisation"}
    assert architecture["input_normalisation"] is None  # a 2-channel (flow) student takes no RGB normalisation
    rebuilt = DistillStudent.from_architecture(architecture).eval()
    assert rebuilt.heads == student.heads and rebuilt.dropout == 0.25 and rebuilt.in_channels == 2
    original_state, rebuilt_state = student.state_dict(), rebuilt.state_dict()
    assert {key: value.shape for key, value in original_state.items()} == {
        key: value.shape for key, value in rebuilt_state.items()
    }
    rebuilt.load_state_dict(original_state, strict=True)
    clip = _clip(name, 2)
    with torch.no_grad():
        expected, actual = student(clip), rebuilt(clip)
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key])


def test_s3d_minimum_clip_shape_is_what_the_registry_says():
    student = create_student("s3d").eval()
    with torch.no_grad():
        assert student.features(torch.zeros(1, 3, 5, 17, 17)).shape == (1, 1024)
        with pytest.raises(RuntimeError):
            student.features(torch.zeros(1, 3, 4, 17, 17))
    student.check_clip_shape(5, 17)
    with pytest.raises(ConfigError, match="at least 5 frames"):
        student.check_clip_shape(4, 112)


def test_wrong_input_channels_and_duplicate_heads_are_refused():
    student = create_student("r3d_18", HEADS, width="tiny", in_channels=2)
    with pytest.raises(ValueError, match=r"expects clips \(B, 2"):
        student(torch.zeros(1, 3, 4, 32, 32))
    with pytest.raises(ConfigError, match="appears twice"):
        create_student("r3d_18", [HEADS[0], HEADS[0]], width="tiny")
    with pytest.raises(ConfigError, match="kind"):
        HeadSpec("teacher/boxes", "boxes", (4,))
