"""Export: the trunk loads strictly into its reference model (torchvision's own video model, or for resnet18_3d
torchvision's resnet18 inflated) and computes the same features."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torchvision

from distinit.distill.export import export_trunk, heads_path_for, load_exported_trunk
from distinit.distill.heads import HeadSpec
from distinit.distill.students import DistillStudent, create_student
from distinit.pipeline.errors import ConfigError, DistinitError

HEADS = [
    HeadSpec("imagenet-efficientnet-lite0/logits", "logits", (1000,)),
    HeadSpec("coco-keypoints/heatmaps", "heatmaps", (17, 14, 14), mask_key="coco-keypoints/person_present"),
]


def _randomise_batch_norm_statistics(model: nn.Module) -> None:
    """Fresh BatchNorm buffers are 0 / 1: give them values so a buffer lost in export would show."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)


def _write_checkpoint(path, student: DistillStudent) -> None:
    # The trainer's checkpoint holds more than this; export reads only "model" and "architecture".
    torch.save({"model": student.state_dict(), "architecture": student.architecture(), "step": 7, "optimizer": {}}, path)


@pytest.mark.parametrize("name", ["r2plus1d_18", "r3d_18"])
def test_exported_trunk_loads_strictly_into_torchvision(tmp_path, name):
    student = create_student(name, HEADS)
    _randomise_batch_norm_statistics(student)
    student.eval()
    _write_checkpoint(tmp_path / "checkpoint.pt", student)

    written = export_trunk(tmp_path / "checkpoint.pt", tmp_path / f"{name}.pt")
    assert written["heads"] == str(tmp_path / f"{name}.heads.pt") == str(heads_path_for(tmp_path / f"{name}.pt"))
    assert written["missing_keys"] == ["fc.bias", "fc.weight"]

    state = torch.load(tmp_path / f"{name}.pt", weights_only=True)
    model = getattr(torchvision.models.video, name)(weights=None)
    result = model.load_state_dict(state, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and result.unexpected_keys == []
    # Every trunk weight loads strictly: torchvision's model minus its classifier takes the file as is.
    model.fc = nn.Identity()
    model.load_state_dict(state, strict=True)
    model.eval()

    clip = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(clip), student.features(clip))


@pytest.mark.parametrize("in_channels", [3, 2])
def test_resnet18_3d_exports_under_resnet18_names_and_loads_back(tmp_path, in_channels):
    student = create_student("resnet18_3d", HEADS, in_channels=in_channels)
    _randomise_batch_norm_statistics(student)
    student.eval()
    _write_checkpoint(tmp_path / "checkpoint.pt", student)

    written = export_trunk(tmp_path / "checkpoint.pt", tmp_path / "resnet18_3d.pt")
    assert written["missing_keys"] == ["fc.bias", "fc.weight"]
    assert written["loads_into"] == "distill.trunk_resnet18_3d.resnet18_3d_classifier()"
    state = torch.load(tmp_path / "resnet18_3d.pt", weights_only=True)
    resnet18_keys = {key for key in torchvision.models.resnet18(weights=None).state_dict() if not key.startswith("fc.")}
    assert set(state) == resnet18_keys and state["conv1.weight"].shape == (64, in_channels, 3, 7, 7)

    model = load_exported_trunk(tmp_path / "resnet18_3d.pt", "resnet18_3d").eval()
    assert isinstance(model, torchvision.models.ResNet) and model.fc.out_features == 1000
    model.fc = nn.Identity()
    clip = torch.randn(1, in_channels, 8, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(clip), student.features(clip))
    # Not torchvision's r3d_18 (no max-pool, zero temporal padding): the names refuse it rather than compute wrongly.
    with pytest.raises(ConfigError, match=r"not a r3d_18 trunk \(unexpected keys: \['conv1.weight'"):
        load_exported_trunk(tmp_path / "resnet18_3d.pt", "r3d_18")


def test_heads_file_rebuilds_the_whole_student(tmp_path):
    student = create_student("mc3_18", HEADS).eval()
    _write_checkpoint(tmp_path / "checkpoint.pt", student)
    export_trunk(tmp_path / "checkpoint.pt", tmp_path / "trunk.pth")

    heads = torch.load(tmp_path / "trunk.heads.pt", weights_only=True)
    assert heads["trunk_file"] == "trunk.pth"
    rebuilt = DistillStudent.from_architecture(heads["architecture"]).eval()
    rebuilt.trunk.load_state_dict(torch.load(tmp_path / "trunk.pth", weights_only=True), strict=True)
    rebuilt.head_modules.load_state_dict(heads["head_state_dict"], strict=True)
    clip = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        expected, actual = student(clip), rebuilt(clip)
    for spec in HEADS:
        torch.testing.assert_close(actual[spec.key], expected[spec.key])


def test_flow_and_s3d_students_export_too(tmp_path):
    flow_student = create_student("mc3_18", HEADS, in_channels=2).eval()
    _write_checkpoint(tmp_path / "flow.ckpt", flow_student)
    export_trunk(tmp_path / "flow.ckpt", tmp_path / "flow.pt")
    model = load_exported_trunk(tmp_path / "flow.pt", "mc3_18").eval()
    model.fc = nn.Identity()
    clip = torch.randn(1, 2, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(clip), flow_student.features(clip))

    s3d_student = create_student("s3d", HEADS)
    _write_checkpoint(tmp_path / "s3d.ckpt", s3d_student)
    written = export_trunk(tmp_path / "s3d.ckpt", tmp_path / "s3d.pt")
    assert written["missing_keys"] == ["classifier.1.bias", "classifier.1.weight"]
    assert isinstance(load_exported_trunk(tmp_path / "s3d.pt", "s3d"), torchvision.models.video.S3D)


def test_refusals(tmp_path):
    tiny = create_student("r2plus1d_18", HEADS, width="tiny")
    _write_checkpoint(tmp_path / "tiny.ckpt", tiny)
    with pytest.raises(ConfigError, match="only full-width students export"):
        export_trunk(tmp_path / "tiny.ckpt", tmp_path / "tiny.pt")
    assert not (tmp_path / "tiny.pt").exists()

    with pytest.raises(DistinitError, match="absent.ckpt"):
        export_trunk(tmp_path / "absent.ckpt", tmp_path / "out.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a pickle")
    with pytest.raises(DistinitError, match="garbage.pt"):
        export_trunk(tmp_path / "garbage.pt", tmp_path / "out.pt")
    with pytest.raises(ConfigError, match="cannot read an exported trunk"):
        load_exported_trunk(tmp_path / "garbage.pt", "r3d_18")
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    with pytest.raises(DistinitError, match="not a distinit checkpoint"):
        export_trunk(tmp_path / "foreign.ckpt", tmp_path / "out.pt")

    mismatched = create_student("r3d_18", HEADS, width="tiny")
    torch.save({"model": mismatched.state_dict(), "architecture": {**mismatched.architecture(), "width": "full"}},
               tmp_path / "mismatched.ckpt")
    with pytest.raises(ConfigError, match=r"do not fit its own architecture \(Missing key"):
        export_trunk(tmp_path / "mismatched.ckpt", tmp_path / "out.pt")

    mc3 = create_student("mc3_18", HEADS)
    _write_checkpoint(tmp_path / "mc3.ckpt", mc3)
    export_trunk(tmp_path / "mc3.ckpt", tmp_path / "mc3.pt")
    with pytest.raises(ConfigError, match="not a r2plus1d_18 trunk"):
        load_exported_trunk(tmp_path / "mc3.pt", "r2plus1d_18")
    with pytest.raises(ConfigError, match="not a s3d trunk"):
        load_exported_trunk(tmp_path / "mc3.pt", "s3d")
