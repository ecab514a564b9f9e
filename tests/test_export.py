"""Export: the pt file and the safetensors folder hold the student's trunk under its reference model's names (every
student's keys and shapes checked against the reference model, cheaply; the pt trunk loaded back into torchvision and
compared on one clip), its heads rebuild the whole student, config.json says what it should and is written the same
on every export, re-exporting into an old folder leaves nothing stale; refusals. One mc3_18 student (the smallest
torchvision one) serves the module. Loading the safetensors export elsewhere (torchvision, torch.hub, MMAction2, each
compared on one clip): test_hub.py."""

from __future__ import annotations

import dataclasses
import json
import shutil
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torchvision
from click.testing import CliRunner
from safetensors.torch import load_file

from distinit import pipeline
from distinit.distill.config import DistillConfig
from distinit.distill.export import export_trunk, heads_path_for, reference_model_name
from distinit.distill.export_load import EXPORTABLE_STUDENTS, load_export, load_exported_trunk, read_export
from distinit.distill.heads import HeadSpec
from distinit.distill.students import DistillStudent, create_student
from distinit.distill.trunk_resnet18_3d import resnet18_3d_classifier
from distinit.pipeline.atomic import atomic_write_text
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
GIT_STATE = {"git_commit": "c" * 40, "git_dirty": False}  # the exporting code's, held still: others commit meanwhile


def randomise_batch_norm_statistics(model: nn.Module) -> None:
    """Fresh BatchNorm buffers are 0 / 1: give them values so a buffer lost in export would show."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)


def _write_checkpoint(path, student: DistillStudent) -> None:
    # The trainer's checkpoint holds more than this; export reads only "model" and "architecture".
    torch.save({"model": student.state_dict(), "architecture": student.architecture(), "step": 7, "optimizer": {}}, path)


def write_distill_checkpoint(path, student: DistillStudent, clip_shape: dict | None = None) -> None:
    """What the trainer's checkpoint holds that export reads: also its config (the clip shape, CLIP_SHAPE unless
    given) and provenance, the latter with a list of video names as older checkpoints kept there."""
    config = DistillConfig(student=student.name, modality="flow" if student.in_channels == 2 else "rgb",
                           **(clip_shape or CLIP_SHAPE))
    provenance = {"git_commit": "0" * 40, "git_dirty": False, "code_version": "distill-4", "targets_fingerprint": "f" * 16,
                  "pretraining_videos": {"count": 2, "sha256": "a" * 64, "names": ["v1", "v2"]}}
    torch.save({"model": student.state_dict(), "architecture": student.architecture(), "step": 7, "epoch": 1,
                "optimizer": {}, "config": dataclasses.asdict(config), "provenance": provenance}, path)


@pytest.fixture(scope="module")
def mc3(tmp_path_factory):
    """An mc3_18 student with heads and random batch-norm statistics, its distill checkpoint, and both its exports:
    `pt` (export_trunk's result for folder/trunk.pt) and `export`, the safetensors folder written by the CLI, whose
    output is `shown`. The tests only read them."""
    folder = tmp_path_factory.mktemp("mc3_18")
    torch.manual_seed(0)
    student = create_student("mc3_18", HEADS)
    randomise_batch_norm_statistics(student)
    student.eval()
    checkpoint = folder / "checkpoint.pt"
    write_distill_checkpoint(checkpoint, student)
    pt = export_trunk(checkpoint, folder / "trunk.pt")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("distinit.distill.export.git_state", lambda: GIT_STATE)
        shown = CliRunner().invoke(main, ["export", str(checkpoint), "--out", str(folder / "export")])
    assert shown.exit_code == 0, shown.output
    return SimpleNamespace(student=student, checkpoint=checkpoint, pt=pt, folder=folder, export=folder / "export",
                           shown=shown.output)


def small_clip(in_channels: int = 3) -> torch.Tensor:
    return torch.randn(1, in_channels, 4, 16, 16, generator=torch.Generator().manual_seed(0))  # (B, C, T, H, W)


def assert_torchvision_takes_the_trunk(name: str, state, student: DistillStudent, clip: torch.Tensor) -> None:
    """Every trunk weight loads strictly: torchvision's `name` minus its classifier takes `state` as is, and computes
    the student's features on `clip`."""
    model = getattr(torchvision.models.video, name)(weights=None)
    model.fc = nn.Identity()
    model.load_state_dict(state, strict=True)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(clip), student.features(clip))


def assert_rebuilds_the_student(architecture, trunk_state, head_state, student: DistillStudent) -> None:
    """The exported architecture, trunk and heads make the whole distill student again: each head's output on a clip."""
    rebuilt = DistillStudent.from_architecture(architecture).eval()
    rebuilt.trunk.load_state_dict(trunk_state, strict=True)
    rebuilt.head_modules.load_state_dict(head_state, strict=True)
    with torch.no_grad():
        expected, actual = student(small_clip()), rebuilt(small_clip())
    for spec in HEADS:
        torch.testing.assert_close(actual[spec.key], expected[spec.key])


@pytest.mark.parametrize("name", EXPORTABLE_STUDENTS)
def test_each_students_trunk_has_its_reference_models_keys_and_shapes(name):
    """On the meta device (no weights made, nothing run): the trunk is the reference model's state_dict less exactly
    its classifier, key for key and shape for shape; what export's own load check and the loaders rely on."""
    with torch.device("meta"):
        trunk = {key: value.shape for key, value in create_student(name, HEADS).trunk_state_dict().items()}
        reference = resnet18_3d_classifier() if name == "resnet18_3d" else getattr(torchvision.models.video, name)()
        reference_shapes = {key: value.shape for key, value in reference.state_dict().items()}
        resnet18_keys = set(torchvision.models.resnet18().state_dict())
    classifier = "classifier.1" if name == "s3d" else "fc"  # S3D's is a Sequential(Dropout, Conv3d)
    assert sorted(set(reference_shapes) - set(trunk)) == [f"{classifier}.bias", f"{classifier}.weight"]
    assert trunk == {key: shape for key, shape in reference_shapes.items() if key in trunk}
    if name == "resnet18_3d":  # torchvision's 2D resnet18's names with 5D weights: r3d_18 refuses them (test_hub.py)
        assert set(trunk) == {key for key in resnet18_keys if not key.startswith("fc.")}
        assert trunk["conv1.weight"] == (64, 3, 3, 7, 7)
        assert reference_model_name(name) == "distinit.distill.trunk_resnet18_3d.resnet18_3d_classifier()"
    else:
        assert reference_model_name(name) == f"torchvision.models.video.{name}()"


def test_pt_export_loads_strictly_into_torchvision_and_rebuilds_the_student(mc3):
    written = mc3.pt
    assert written["format"] == "pt" and written["config"] is None and written["name"] == "mc3_18"
    assert written["heads"] == str(mc3.folder / "trunk.heads.pt") == str(heads_path_for(mc3.folder / "trunk.pt"))
    assert written["missing_keys"] == ["fc.bias", "fc.weight"]
    assert written["loads_into"] == "torchvision.models.video.mc3_18()"

    state = torch.load(mc3.folder / "trunk.pt", weights_only=True)
    assert_torchvision_takes_the_trunk("mc3_18", state, mc3.student, small_clip())  # the pt format's one clip
    loaded = load_exported_trunk(mc3.folder / "trunk.pt", "mc3_18")  # distinit's loader: the same weights
    assert isinstance(loaded, torchvision.models.video.VideoResNet) and loaded.fc.out_features == 1000
    assert all(torch.equal(loaded.state_dict()[key], value) for key, value in state.items())

    heads = torch.load(mc3.folder / "trunk.heads.pt", weights_only=True)
    assert heads["trunk_file"] == "trunk.pt" and heads["input_normalisation"] == {"mean": VIDEO_MEAN, "std": VIDEO_STD}
    assert_rebuilds_the_student(heads["architecture"], state, heads["head_state_dict"], mc3.student)


def test_refusals(tmp_path, mc3):
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

    mismatched = create_student("mc3_18", HEADS, width="tiny")
    torch.save({"model": mismatched.state_dict(), "architecture": {**mismatched.architecture(), "width": "full"}},
               tmp_path / "mismatched.ckpt")
    with pytest.raises(ConfigError, match=r"do not fit its own architecture \(Missing key"):
        export_trunk(tmp_path / "mismatched.ckpt", tmp_path / "out.pt")

    with pytest.raises(ConfigError, match="not a r2plus1d_18 trunk"):  # same names, other shapes
        load_exported_trunk(mc3.folder / "trunk.pt", "r2plus1d_18")
    with pytest.raises(ConfigError, match="not a s3d trunk"):  # other names
        load_exported_trunk(mc3.folder / "trunk.pt", "s3d")
    _write_checkpoint(tmp_path / "mc3.ckpt", mc3.student)
    with pytest.raises(ConfigError, match="records no clip shape"):  # a hand-made checkpoint has no config
        export_trunk(tmp_path / "mc3.ckpt", tmp_path / "mc3-export")
    assert not (tmp_path / "mc3-export").exists()


def test_pt_export_named_safetensors_is_refused_up_front(tmp_path):
    # Refused before the checkpoint is read (it does not exist), in one line, and nothing is written.
    shown = CliRunner().invoke(main, ["export", str(tmp_path / "absent.ckpt"), "--out", str(tmp_path / "x.safetensors"),
                                      "--format", "pt"])
    assert shown.exit_code == 1
    assert shown.output.strip().splitlines() == [
        f"Error: --out {tmp_path / 'x.safetensors'}: --format pt writes a torch.save file; name it .pt or .pth"]
    assert list(tmp_path.iterdir()) == []


def test_safetensors_export_folder_config_and_round_trip(mc3, tmp_path, monkeypatch):
    folder, checkpoint, student = mc3.export, mc3.checkpoint, mc3.student
    assert mc3.shown.splitlines() == [
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
    assert provenance["export"] == {"distinit_version": pipeline.__version__, **GIT_STATE}

    # The trunk: contiguous tensors, the student's own under its reference names (loading them into torchvision and
    # comparing outputs: test_hub.py's docs test); with the heads and student_architecture, the whole student.
    state = load_file(folder / "model.safetensors")
    assert all(tensor.is_contiguous() for tensor in state.values())
    trunk = student.trunk_state_dict()
    assert set(state) == set(trunk) and all(torch.equal(state[key], trunk[key]) for key in trunk)
    assert_rebuilds_the_student(config["student_architecture"], state, load_file(folder / "heads.safetensors"), student)

    # Exported again (the library this time, format explicit): the same bytes.
    monkeypatch.setattr("distinit.distill.export.git_state", lambda: GIT_STATE)
    written = export_trunk(checkpoint, tmp_path / "again", export_format="safetensors")
    assert written["config"] == str(tmp_path / "again" / "config.json")
    for name in ("model.safetensors", "heads.safetensors", "config.json"):
        assert (tmp_path / "again" / name).read_bytes() == (folder / name).read_bytes(), name


def test_reexport_without_heads_removes_the_old_heads_file_before_config(mc3, tmp_path, monkeypatch):
    folder = tmp_path / "export"
    shutil.copytree(mc3.export, folder)  # an older export, with heads
    headless = create_student("mc3_18", []).eval()
    write_distill_checkpoint(tmp_path / "headless.ckpt", headless)
    seen_when_config_written = []

    def watching_write_text(path, text):
        seen_when_config_written.append(sorted(entry.name for entry in folder.iterdir()))
        atomic_write_text(path, text)

    monkeypatch.setattr("distinit.distill.export.atomic_write_text", watching_write_text)
    written = export_trunk(tmp_path / "headless.ckpt", folder)
    # config.json last: when it is replaced, the stale heads file is already gone.
    assert seen_when_config_written == [["config.json", "model.safetensors"]]
    assert written["heads"] is None
    assert sorted(path.name for path in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["heads"] is None
    assert config["files"] == {"model.safetensors": sha256_file(folder / "model.safetensors")}
    state, _ = read_export(folder)
    trunk = headless.trunk_state_dict()
    assert set(state) == set(trunk) and all(torch.equal(state[key], trunk[key]) for key in trunk)


def test_safetensors_export_refusals(tmp_path, mc3):
    with pytest.raises(ConfigError, match=r"--out trunk.pt: the safetensors format writes a folder"):
        export_trunk(tmp_path / "absent.ckpt", "trunk.pt", export_format="safetensors")
    with pytest.raises(ConfigError, match="export format 'onnx' is unknown; use one of safetensors, pt"):
        export_trunk(tmp_path / "absent.ckpt", tmp_path / "out", export_format="onnx")

    with pytest.raises(ConfigError, match=r"export: an export of mc3_18, not s3d; load it as mc3_18$"):
        load_exported_trunk(mc3.export, "s3d")
    assert isinstance(load_exported_trunk(mc3.export, "mc3_18"), torchvision.models.video.VideoResNet)

    broken = tmp_path / "broken"
    shutil.copytree(mc3.export, broken)
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
