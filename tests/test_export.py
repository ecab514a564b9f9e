"""Export: the trunk loads strictly into its reference model (torchvision's own video model, or for resnet18_3d
torchvision's resnet18 inflated) and computes the same features; the safetensors folder's files and config.json,
written the same on every export; refusals. Loading exports elsewhere (torch.hub, the docs, MMAction2): test_hub.py."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
import torch.nn as nn
import torchvision
from click.testing import CliRunner
from safetensors.torch import load_file

from distinit import pipeline
from distinit.distill.config import DistillConfig
from distinit.distill.export import export_trunk, heads_path_for, load_export, load_exported_trunk, read_export
from distinit.distill.heads import HeadSpec
from distinit.distill.students import DistillStudent, create_student
from distinit.pipeline.cli import main
from distinit.pipeline.errors import ConfigError, DistinitError
from distinit.pipeline.hashing import sha256_file, sha256_json

HEADS = [
    HeadSpec("imagenet-efficientnet-lite0/logits", "logits", (1000,)),
    HeadSpec("coco-keypoints/heatmaps", "heatmaps", (17, 14, 14), mask_key="coco-keypoints/person_present"),
]


VIDEO_MEAN = [0.43216, 0.394666, 0.37645]  # the video mean/std distilled RGB students are trained with
VIDEO_STD = [0.22803, 0.22145, 0.216989]
CLIP_SHAPE = {"frames": 8, "stride": 2, "short_side": 40, "crop": 32}


def randomise_batch_norm_statistics(model: nn.Module) -> None:
    """Fresh BatchNorm buffers are 0 / 1: give them values so a buffer lost in export would show."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)


def _write_checkpoint(path, student: DistillStudent) -> None:
    # The trainer's checkpoint holds more than this; export reads only "model" and "architecture".
    torch.save({"model": student.state_dict(), "architecture": student.architecture(), "step": 7, "optimizer": {}}, path)


def write_distill_checkpoint(path, student: DistillStudent) -> None:
    """What the trainer's checkpoint holds that export reads: also its config (the clip shape) and provenance, the
    latter with a list of video names as older checkpoints kept there."""
    config = DistillConfig(student=student.name, modality="flow" if student.in_channels == 2 else "rgb", **CLIP_SHAPE)
    provenance = {"git_commit": "0" * 40, "git_dirty": False, "code_version": "distill-4", "targets_fingerprint": "f" * 16,
                  "pretraining_videos": {"count": 2, "sha256": "a" * 64, "names": ["v1", "v2"]}}
    torch.save({"model": student.state_dict(), "architecture": student.architecture(), "step": 7, "epoch": 1,
                "optimizer": {}, "config": dataclasses.asdict(config), "provenance": provenance}, path)


@pytest.mark.parametrize("name", ["r2plus1d_18", "r3d_18"])
def test_exported_trunk_loads_strictly_into_torchvision(tmp_path, name):
    student = create_student(name, HEADS)
    randomise_batch_norm_statistics(student)
    student.eval()
    _write_checkpoint(tmp_path / "checkpoint.pt", student)

    written = export_trunk(tmp_path / "checkpoint.pt", tmp_path / f"{name}.pt")
    assert written["heads"] == str(tmp_path / f"{name}.heads.pt") == str(heads_path_for(tmp_path / f"{name}.pt"))
    assert written["missing_keys"] == ["fc.bias", "fc.weight"]

    state = torch.load(tmp_path / f"{name}.pt", weights_only=True)
    model = getattr(torchvision.models.video, name)(weights=None)
    result = model.load_state_dict(state, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and result.unexpected_keys == []
    assert_torchvision_takes_the_trunk(name, state, student, torch.randn(2, 3, 4, 32, 32))


def assert_torchvision_takes_the_trunk(name: str, state, student: DistillStudent, clip: torch.Tensor) -> None:
    """Every trunk weight loads strictly: torchvision's `name` minus its classifier takes `state` as is, and computes
    the student's features on `clip`."""
    model = getattr(torchvision.models.video, name)(weights=None)
    model.fc = nn.Identity()
    model.load_state_dict(state, strict=True)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(clip), student.features(clip))


@pytest.mark.parametrize("in_channels", [3, 2])
def test_resnet18_3d_exports_under_resnet18_names_and_loads_back(tmp_path, in_channels):
    student = create_student("resnet18_3d", HEADS, in_channels=in_channels)
    randomise_batch_norm_statistics(student)
    student.eval()
    _write_checkpoint(tmp_path / "checkpoint.pt", student)

    written = export_trunk(tmp_path / "checkpoint.pt", tmp_path / "resnet18_3d.pt")
    assert written["missing_keys"] == ["fc.bias", "fc.weight"]
    assert written["loads_into"] == "distinit.distill.trunk_resnet18_3d.resnet18_3d_classifier()"
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
    with pytest.raises(ConfigError, match="records no clip shape"):  # a hand-made checkpoint has no config
        export_trunk(tmp_path / "mc3.ckpt", tmp_path / "mc3-export")
    assert not (tmp_path / "mc3-export").exists()


def test_safetensors_export_folder_config_and_round_trip(tmp_path, monkeypatch):
    student = create_student("mc3_18", HEADS)
    randomise_batch_norm_statistics(student)
    student.eval()
    checkpoint = tmp_path / "checkpoint.pt"
    write_distill_checkpoint(checkpoint, student)
    # Another process may commit while this test runs: hold the exporting code's git state still.
    monkeypatch.setattr("distinit.distill.export.git_state", lambda: {"git_commit": "c" * 40, "git_dirty": False})

    shown = CliRunner().invoke(main, ["export", str(checkpoint), "--out", str(tmp_path / "export")])
    assert shown.exit_code == 0, shown.output
    folder = tmp_path / "export"
    assert shown.output.splitlines() == [
        f"trunk -> {folder / 'model.safetensors'} (loads into torchvision.models.video.mc3_18(); missing only fc.bias, "
        "fc.weight)", f"config -> {folder / 'config.json'}", f"heads -> {folder / 'heads.safetensors'}"]
    assert sorted(path.name for path in folder.iterdir()) == ["config.json", "heads.safetensors", "model.safetensors"]

    config = json.loads((folder / "config.json").read_text())
    assert config["format"] == "distinit-export-v1" and config["heads"] == "heads.safetensors"
    assert config["architecture"] == {
        "student": "mc3_18", "width": "full", "in_channels": 3, "feature_dim": 512,
        "reference_model": "torchvision.models.video.mc3_18()", "weights": "model.safetensors",
        "missing_keys": ["fc.bias", "fc.weight"],
        "missing_note": "the classifier, which distillation does not train: replace it for your task"}
    assert config["clip"] == {"modality": "rgb", **CLIP_SHAPE, "layout": "(C, T, H, W)"}
    assert config["normalisation"] == {"kind": "rgb", "channel_order": "RGB", "value_range": [0, 1],
                                       "mean": VIDEO_MEAN, "std": VIDEO_STD, "formula": "(x - mean) / std"}
    assert config["student_architecture"] == json.loads(json.dumps(student.architecture()))
    assert config["files"] == {name: sha256_file(folder / name) for name in ("model.safetensors", "heads.safetensors")}
    provenance = config["provenance"]
    assert provenance["checkpoint"] == {"path": str(checkpoint.resolve()), "sha256": sha256_file(checkpoint),
                                        "step": 7, "epoch": 1}
    distilled = provenance["distill"]
    assert distilled["git_commit"] == "0" * 40 and distilled["code_version"] == "distill-4"
    assert distilled["pretraining_videos"] == {"count": 2, "sha256": "a" * 64}  # the names stay in the checkpoint
    assert distilled["config"]["crop"] == 32 and distilled["config_sha256"] == sha256_json(distilled["config"])
    assert provenance["export"] == {"distinit_version": pipeline.__version__, "git_commit": "c" * 40, "git_dirty": False}

    # The trunk: contiguous tensors that torchvision's mc3_18 minus its classifier takes strictly, same features.
    state = load_file(folder / "model.safetensors")
    assert all(tensor.is_contiguous() for tensor in state.values())
    clip = torch.randn(1, 3, 8, 32, 32)
    assert_torchvision_takes_the_trunk("mc3_18", state, student, clip)
    with torch.no_grad():
        ready, _ = load_export(folder)  # the same, ready: classifier nn.Identity, eval mode
        torch.testing.assert_close(ready(clip), student.features(clip))
    # The heads and student_architecture rebuild the whole distill student.
    rebuilt = DistillStudent.from_architecture(config["student_architecture"]).eval()
    rebuilt.trunk.load_state_dict(state, strict=True)
    rebuilt.head_modules.load_state_dict(load_file(folder / "heads.safetensors"), strict=True)
    with torch.no_grad():
        expected, actual = student(clip), rebuilt(clip)
    for spec in HEADS:
        torch.testing.assert_close(actual[spec.key], expected[spec.key])

    # Exported again (the library this time, format explicit): the same bytes.
    written = export_trunk(checkpoint, tmp_path / "again", export_format="safetensors")
    assert written["config"] == str(tmp_path / "again" / "config.json")
    for name in ("model.safetensors", "heads.safetensors", "config.json"):
        assert (tmp_path / "again" / name).read_bytes() == (folder / name).read_bytes(), name


def test_safetensors_export_refusals(tmp_path):
    with pytest.raises(ConfigError, match=r"--out trunk.pt: the safetensors format writes a folder"):
        export_trunk(tmp_path / "absent.ckpt", "trunk.pt", export_format="safetensors")
    with pytest.raises(ConfigError, match="export format 'onnx' is unknown; use one of safetensors, pt"):
        export_trunk(tmp_path / "absent.ckpt", tmp_path / "out", export_format="onnx")

    student = create_student("s3d", HEADS).eval()
    write_distill_checkpoint(tmp_path / "s3d.ckpt", student)
    export_trunk(tmp_path / "s3d.ckpt", tmp_path / "s3d")
    with pytest.raises(ConfigError, match=r"s3d: an export of s3d, not mc3_18; load it as s3d$"):
        load_exported_trunk(tmp_path / "s3d", "mc3_18")
    assert isinstance(load_exported_trunk(tmp_path / "s3d", "s3d"), torchvision.models.video.S3D)

    broken = tmp_path / "broken"
    shutil.copytree(tmp_path / "s3d", broken)
    with open(broken / "model.safetensors", "r+b") as stream:  # one byte of a weight changed
        stream.seek(-1, 2)
        last = stream.read(1)
        stream.seek(-1, 2)
        stream.write(bytes([last[0] ^ 1]))
    with pytest.raises(ConfigError, match=r"model.safetensors: not the weights .*config.json describes"):
        read_export(broken)
    (broken / "config.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ConfigError, match=r"config.json: not a distinit export config \(format 'something-else'"):
        read_export(broken / "model.safetensors")
    (broken / "config.json").unlink()
    with pytest.raises(ConfigError, match=r"config.json: cannot read the export's config \(FileNotFoundError\)"):
        read_export(broken)
    with pytest.raises(ConfigError, match=r"nowhere/model.safetensors: not found; pass the folder"):
        read_export(tmp_path / "nowhere" / "model.safetensors")
    with pytest.raises(ConfigError, match=r"trunk.pt: a --format pt trunk, which has no config.json"):
        load_export(tmp_path / "trunk.pt")
