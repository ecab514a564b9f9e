"""Exports loaded outside distinit's trainer: hubconf.py through torch.hub (its entry points, the transform,
refusals), the torchvision, torch.hub and MMAction2 snippets of docs/export.md run as written, and the MMAction2
checkpoint against torchvision's model wrapped as MMAction2 wraps it. Each way of loading compares outputs on one
small clip with the student's own trunk, on random weights with random batch-norm statistics (a weight or buffer lost
on the way would show), and what the students differ in (S3D's classifier and pool, resnet18_3d's network, a flow
stem) once each. r3d_18 (loaded exactly as r2plus1d_18 and mc3_18 are) and the RGB resnet18_3d get test_export.py's
check of keys and shapes, and every entry point the signature check here, without weights."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision

from distinit.distill.export import export_trunk
from distinit.distill.export_load import EXPORTABLE_STUDENTS, mmaction2_checkpoint, read_export, reference_model
from distinit.distill.heads import HeadSpec
from distinit.distill.students import create_student, student_entry
from distinit.pipeline.clips.normalisation import VIDEO_MEAN, VIDEO_STD
from distinit.pipeline.errors import ConfigError
from tests.test_export import randomise_batch_norm_statistics, write_distill_checkpoint

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "export.md"
HEADS = [HeadSpec("imagenet-efficientnet-lite0/logits", "logits", (10,))]
FENCED_PYTHON = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
SMALL_CLIP = {"frames": 4, "stride": 2, "short_side": 20, "crop": 16}  # what the exports record: cheap forwards
S3D_CLIP = {"frames": 8, "stride": 2, "short_side": 40, "crop": 32}  # S3D's pools need 8 frames of 32 x 32


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(name, in_channels) -> (student, its safetensors export folder), each made once for the module. Exported:
    r2plus1d_18 (the docs' and README's), s3d, and resnet18_3d and mc3_18 with flow input."""
    folder = tmp_path_factory.mktemp("exports")
    made = {}

    def export(name: str, in_channels: int = 3):
        if (name, in_channels) not in made:
            torch.manual_seed(len(made))
            student = create_student(name, HEADS, in_channels=in_channels)
            randomise_batch_norm_statistics(student)
            student.eval()
            checkpoint = folder / f"{name}-{in_channels}.ckpt"
            write_distill_checkpoint(checkpoint, student, S3D_CLIP if name == "s3d" else SMALL_CLIP)
            out = folder / f"{name}-{in_channels}"
            export_trunk(checkpoint, out)
            checkpoint.unlink()
            made[name, in_channels] = student, out
        return made[name, in_channels]

    return export


def hub_load(name: str, **options) -> nn.Module:
    return torch.hub.load(str(ROOT), name, source="local", **options)


def load_hubconf():
    spec = importlib.util.spec_from_file_location("distinit_hubconf", ROOT / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hubconf_offers_one_entry_point_per_student_and_imports_distinit_by_its_full_name():
    hubconf = load_hubconf()
    # torch.hub takes every public callable of hubconf.py for an entry point.
    assert sorted(name for name in dir(hubconf) if callable(getattr(hubconf, name)) and not name.startswith("_")) == \
        sorted(EXPORTABLE_STUDENTS)
    for name in EXPORTABLE_STUDENTS:  # each takes weights= and num_classes= and loads as its own student
        parameters = inspect.signature(getattr(hubconf, name)).parameters.values()
        assert [(parameter.name, parameter.default) for parameter in parameters] == [("weights", None),
                                                                                    ("num_classes", None)]
        with pytest.raises(ValueError, match=f"^{name}: pass weights="):
            getattr(hubconf, name)()
    # torch.hub puts the checkout on sys.path: a bare `pipeline` or `evaluate` would be the checkout's folder.
    tree = ast.parse((ROOT / "hubconf.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert {name.split(".")[0] for name in imported} == {"__future__", "torch", "distinit"}


# r2plus1d_18 through torch.hub: test_docs_snippets_run_as_written.
@pytest.mark.parametrize("name, in_channels", [("s3d", 3), ("resnet18_3d", 2), ("mc3_18", 2)])
def test_hub_entry_point_gives_the_reference_model_computing_the_trunk(exported, name, in_channels):
    student, folder = exported(name, in_channels)
    model = hub_load(name, weights=str(folder / "model.safetensors"))
    video_models = torchvision.models.video
    reference = {"s3d": video_models.S3D, "resnet18_3d": torchvision.models.ResNet}.get(name, video_models.VideoResNet)
    assert isinstance(model, reference) and not model.training
    assert isinstance(getattr(model, student_entry(name).torchvision_classifier), nn.Identity)
    config = model.distinit_config
    assert config["architecture"]["student"] == name and config["architecture"]["in_channels"] == in_channels
    classifier = "classifier.1" if name == "s3d" else "fc"
    assert config["architecture"]["missing_keys"] == [f"{classifier}.bias", f"{classifier}.weight"]

    frames, crop = config["clip"]["frames"], config["clip"]["crop"]
    if in_channels == 3:  # (T, H, W, C) bytes, resized to the short side then cropped
        video = torch.randint(0, 256, (frames, 48, 64, 3), dtype=torch.uint8)
    else:  # (T, H, W, (dx, dy)) in pixels
        video = torch.empty(frames, 48, 64, 2).uniform_(-30, 30)
    clip = model.transform(video).unsqueeze(0)
    assert clip.shape == (1, in_channels, frames, crop, crop)
    with torch.no_grad():
        torch.testing.assert_close(model(clip), student.features(clip))


def test_hub_classifier_option_and_refusals(exported):
    _, folder = exported("mc3_18", in_channels=2)
    model = hub_load("mc3_18", weights=str(folder), num_classes=5)  # the folder works as well as its file
    assert model.fc.out_features == 5 and not model.training
    with torch.no_grad():
        assert model(torch.randn(1, 2, 4, 16, 16)).shape == (1, 5)

    with pytest.raises(ConfigError, match=r"names mc3_18, not r3d_18; load it with the mc3_18 entry point$"):
        hub_load("r3d_18", weights=str(folder))
    with pytest.raises(ValueError, match="mc3_18: pass weights="):
        hub_load("mc3_18")
    assert repr(model.transform) == "ClipTransform(flow, {'frames': 4, 'stride': 2, 'short_side': 20, 'crop': 16})"
    with pytest.raises(ValueError, match=r"expected a clip \(T, H, W, 2\); got shape \(4, 20, 20, 3\)"):
        model.transform(torch.zeros(4, 20, 20, 3, dtype=torch.uint8))


def test_transform_gives_distinit_normalised_values():
    from distinit.pipeline.clips.normalisation import VIDEO_NORMALISATION, rgb_to_tensor

    config = {"clip": {"frames": 8, "stride": 2, "short_side": 40, "crop": 32},
              "normalisation": {"kind": "rgb", **VIDEO_NORMALISATION.to_dict()}}
    transform = load_hubconf()._ClipTransform(config)
    frames = np.random.default_rng(0).integers(0, 256, (8, 40, 52, 3), dtype=np.uint8)  # already at the short side
    expected = rgb_to_tensor(np.ascontiguousarray(frames[:, 4:36, 10:42]))  # the centre 32 x 32
    assert torch.equal(transform(frames), expected)
    assert torch.equal(transform(torch.from_numpy(frames).float() / 255), expected)  # float RGB in [0, 1]

    # Resized: a grey clip stays that grey, shrunk (area) or enlarged (bicubic).
    grey = (128 / 255 - torch.tensor(VIDEO_MEAN)) / torch.tensor(VIDEO_STD)
    for height, width in ((120, 160), (20, 30)):
        out = transform(np.full((8, height, width, 3), 128, dtype=np.uint8))
        assert out.shape == (3, 8, 32, 32)
        torch.testing.assert_close(out, grey.view(3, 1, 1, 1).expand(3, 8, 32, 32), atol=1e-5, rtol=0)


def test_flow_export_config_and_transform_give_distinit_scaling(exported):
    from distinit.distill.flow import flow_to_tensor

    _, folder = exported("mc3_18", in_channels=2)
    config = json.loads((folder / "config.json").read_text())
    assert config["normalisation"] == {"kind": "flow", "channels": ["dx", "dy"], "unit": "pixels at short_side",
                                       "method": "farneback", "bound_pixels": 20.0,
                                       "formula": "clip(flow, -bound_pixels, bound_pixels) / bound_pixels"}
    assert config["clip"]["modality"] == "flow" and config["architecture"]["in_channels"] == 2

    transform = load_hubconf()._ClipTransform(config)  # model.transform of the hub's model
    flow = np.random.default_rng(0).uniform(-30, 30, (4, 20, 20, 2)).astype(np.float32)
    assert torch.equal(transform(flow), flow_to_tensor(flow[:, 2:18, 2:18]))  # distinit's scaling, exactly
    # At twice the short side a displacement halves with the frame: (10, -4) px -> (5, -2) -> (0.25, -0.1).
    doubled = transform(np.broadcast_to(np.float32([10, -4]), (4, 40, 40, 2)).copy())
    torch.testing.assert_close(doubled, torch.tensor([0.25, -0.1]).view(2, 1, 1, 1).expand(2, 4, 16, 16))


def test_resnet18_3d_trunk_is_refused_by_r3d_18(exported):
    """Not torchvision's r3d_18 (no stem max-pool, zero temporal padding): the names refuse it rather than the same
    weights computing something else."""
    _, folder = exported("resnet18_3d", in_channels=2)
    state, _ = read_export(folder)
    assert state["conv1.weight"].shape == (64, 2, 3, 7, 7)
    refused = r"not a r3d_18 trunk \(unexpected keys: \['bn1.*'\], missing trunk keys: \['stem.0.weight'"
    with pytest.raises(ConfigError, match=refused):
        reference_model("r3d_18", state, source=folder)


def mmaction2_recognizer(name: str, num_classes: int) -> nn.Module:
    """The parameters and backbone forward of what MMAction2 1.x builds for `Recognizer3D(backbone=dict(type=
    torchvision.models.video.<name>), cls_head=dict(type=I3DHead, ...))`, rebuilt with torchvision alone: MMAction2
    and mmcv are not installed here. mmaction/models/recognizers/base.py calls the torchvision constructor with the
    backbone's remaining options (none) and then sets both `classifier` and `fc` to nn.Identity; I3DHead's only
    weights are `fc_cls`; ActionDataPreprocessor's mean/std buffers are not persistent (not in a state_dict)."""
    recognizer = nn.Module()
    recognizer.backbone = getattr(torchvision.models.video, name)()
    recognizer.backbone.classifier = nn.Identity()
    recognizer.backbone.fc = nn.Identity()
    recognizer.cls_head = nn.Module()
    recognizer.cls_head.fc_cls = nn.Linear(1024 if name == "s3d" else 512, num_classes)
    return recognizer


def mmengine_load(model: nn.Module, checkpoint: dict) -> tuple[list[str], list[str]]:
    """mmengine's `load_from`: the checkpoint's `state_dict`, a leading `module.` stripped, loaded non-strictly;
    (missing keys without BN's num_batches_tracked, unexpected keys). A shape mismatch raises here; mmengine would
    only warn, which is why the converter refuses what cannot fit."""
    state = {re.sub(r"^module\.", "", key): value for key, value in checkpoint["state_dict"].items()}
    result = model.load_state_dict(state, strict=False)
    return sorted(key for key in result.missing_keys if "num_batches_tracked" not in key), list(result.unexpected_keys)


@pytest.mark.parametrize("name", ["r2plus1d_18", "s3d"])
def test_mmaction2_checkpoint_fits_torchvision_wrapped_as_mmaction2_wraps_it(exported, tmp_path, name):
    student, folder = exported(name)
    torch.save(mmaction2_checkpoint(folder), tmp_path / "mmaction2.pth")
    checkpoint = torch.load(tmp_path / "mmaction2.pth", weights_only=True)  # as mmengine's torch.load reads it
    recognizer = mmaction2_recognizer(name, num_classes=51)
    backbone_state = {key: value for key, value in recognizer.state_dict().items() if key.startswith("backbone.")}
    assert {key: value.shape for key, value in checkpoint["state_dict"].items()} == {
        key: value.shape for key, value in backbone_state.items()}
    assert mmengine_load(recognizer, checkpoint) == (["cls_head.fc_cls.bias", "cls_head.fc_cls.weight"], [])
    meta = checkpoint["meta"]["distinit_export"]
    assert meta["architecture"]["student"] == name and meta["normalisation"]["mean"] == list(VIDEO_MEAN)
    if name == "r2plus1d_18":  # S3D keeps torchvision's fixed 2x7x7 pool in MMAction2: it needs 16x224x224 clips
        clip = torch.randn(1, 3, 4, 16, 16)
        with torch.no_grad():
            torch.testing.assert_close(recognizer.backbone.eval()(clip), student.features(clip))


def test_mmaction2_checkpoint_refuses_what_mmaction2_cannot_build(exported):
    _, resnet18_3d = exported("resnet18_3d", in_channels=2)  # refused as resnet18_3d before its channels count
    with pytest.raises(ConfigError, match="resnet18_3d is not a torchvision model"):
        mmaction2_checkpoint(resnet18_3d)
    _, flow = exported("mc3_18", in_channels=2)
    with pytest.raises(ConfigError, match=r"a 2-channel \(flow\) trunk"):
        mmaction2_checkpoint(flow)


def test_docs_snippets_run_as_written(exported, tmp_path, monkeypatch, capsys):
    student, folder = exported("r2plus1d_18")
    (tmp_path / "exports").mkdir()
    (tmp_path / "exports" / "r2plus1d_18").symlink_to(folder)
    (tmp_path / "distinit").symlink_to(ROOT)  # "distinit": the checkout, as the page calls it
    monkeypatch.chdir(tmp_path)
    blocks = FENCED_PYTHON.findall(PAGE.read_text(encoding="utf-8"))
    by_role = {role: [block for block in blocks if marker in block] for role, marker in (
        ("torchvision", "torchvision.models.video.r2plus1d_18()"), ("hub", "torch.hub.load"),
        ("convert", "mmaction2_checkpoint("), ("mmaction2 config", "from mmaction.models import"))}
    assert all(len(found) == 1 for found in by_role.values()) and len(blocks) == 4, by_role

    namespace = run_snippet(by_role["torchvision"][0])
    with torch.no_grad():
        expected = student.features(((namespace["clip"] - namespace["mean"]) / namespace["std"]).unsqueeze(0))
    torch.testing.assert_close(namespace["features"], expected)

    namespace = run_snippet(by_role["hub"][0])
    with torch.no_grad():
        expected = student.features(namespace["model"].transform(namespace["video"]).unsqueeze(0))
    torch.testing.assert_close(namespace["features"], expected)
    assert namespace["finetune"].fc.out_features == 51

    capsys.readouterr()
    run_snippet(by_role["convert"][0])
    printed = capsys.readouterr().out
    checkpoint = torch.load("exports/r2plus1d_18_mmaction2.pth", weights_only=True)
    assert set(checkpoint["state_dict"]) == {f"backbone.{key}" for key in student.trunk_state_dict()}

    # The MMAction2 config needs mmaction2 (not here): it compiles, loads what the conversion wrote, and its mean and
    # std are, digit for digit, the ones the conversion printed: 255 x pipeline.clips.normalisation's, rounded.
    config = by_role["mmaction2 config"][0]
    compile(config, str(PAGE), "exec")
    assert 'load_from = "exports/r2plus1d_18_mmaction2.pth"' in config and "spatial_type=None" in config
    for field in ("mean", "std"):
        shown = json.loads(re.search(rf"{field}=(\[[^\]]*\])", config).group(1))
        computed = json.loads(re.search(rf"^{field} (\[.*\])$", printed, re.M).group(1))
        expected = [round(255 * value, 4) for value in (VIDEO_MEAN if field == "mean" else VIDEO_STD)]
        assert shown == computed == expected, field


def run_snippet(code: str) -> dict:
    namespace: dict = {"__name__": "docs_export_snippet"}
    exec(compile(code, str(PAGE), "exec"), namespace)
    return namespace


def test_readme_snippets_run_as_written(exported, tmp_path, monkeypatch):
    """The README's "Using the distilled weights" blocks: torchvision loads every trunk weight (the assert in the
    block), the student's own (the same path as the docs' torchvision snippet, whose outputs are compared there);
    the MMAction2 conversion writes backbone.* keys."""
    student, folder = exported("r2plus1d_18")
    (tmp_path / "exports").mkdir()
    (tmp_path / "exports" / "r2plus1d_18").symlink_to(folder)
    monkeypatch.chdir(tmp_path)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Using the distilled weights", 1)[1].split("\n## ", 1)[0]
    torchvision_block, convert_block = FENCED_PYTHON.findall(section)

    loaded = run_snippet(torchvision_block)["model"].state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in student.trunk_state_dict().items())

    run_snippet(convert_block)
    checkpoint = torch.load("exports/r2plus1d_18_mmaction2.pth", weights_only=True)
    assert set(checkpoint["state_dict"]) == {f"backbone.{key}" for key in student.trunk_state_dict()}
