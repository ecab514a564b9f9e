"""`distinit teachers`: per teacher its options and, per weights file, where it comes from, where it is kept and
whether it is there, all without building a teacher, touching the network or importing a missing package."""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys

import pytest
from click.testing import CliRunner

from distinit.extract.teachers.base import Teacher
from distinit.extract.teachers.mediapipe_pose import MediaPipePoseTeacher
from distinit.extract.teachers.registry import TEACHERS
from distinit.pipeline.cli import main
from distinit.pipeline.weights.download import presence
from distinit.pipeline.weights.source import WeightsSource

RESNET50_URL = "https://download.pytorch.org/models/resnet50-11ad3fa6.pth"


@pytest.fixture
def torch_home(monkeypatch, tmp_path):
    for variable in ("DISTINIT_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    return tmp_path


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*arguments, **keywords):
        raise AssertionError("distinit teachers must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _teachers(*arguments: str) -> list[str]:
    result = CliRunner().invoke(main, ["teachers", *arguments])
    assert result.exit_code == 0, result.output
    return result.output.splitlines()


def test_torchvision_weights_absent_then_present(torch_home, no_network):
    cached = torch_home / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth"
    lines = _teachers("--teacher", "imagenet-torchvision")
    assert lines[0].startswith("imagenet-torchvision") and "model='resnet50'" in lines[0]
    assert lines[1:] == [
        "    weights: torchvision resnet50 IMAGENET1K_V2: not downloaded yet: fetched on first use",
        f"      from {RESNET50_URL}",
        f"      at   {cached}",
    ]
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"stand-in")  # presence only: the listing reads no file
    assert _teachers("--teacher", "imagenet-torchvision")[1].endswith(": present")


def test_offline_says_missing(torch_home, no_network, monkeypatch):
    monkeypatch.setenv("DISTINIT_OFFLINE", "1")
    assert _teachers("--teacher", "imagenet-torchvision")[1].endswith(": offline: missing")
    monkeypatch.delenv("DISTINIT_OFFLINE")
    line = _teachers("--teacher", "imagenet-torchvision", "--offline")[1]  # the flag sets DISTINIT_OFFLINE itself
    assert line.endswith(": offline: missing")


def test_options_choose_the_file(torch_home, no_network):
    lines = _teachers("--teacher", "imagenet-torchvision", "--option", "model=resnet18")
    assert "model='resnet18'" in lines[0] and "torchvision resnet18 IMAGENET1K_V1" in lines[1]
    assert lines[2].endswith("/resnet18-f37072fd.pth")
    result = CliRunner().invoke(main, ["teachers", "--teacher", "imagenet-torchvision", "--option", "modle=resnet18"])
    assert result.exit_code == 1 and "has no option modle" in result.output
    result = CliRunner().invoke(main, ["teachers", "--teacher", "imagenet-vgg"])
    assert result.exit_code == 1 and "unknown teacher 'imagenet-vgg'" in result.output


def test_every_teacher_is_listed_and_a_failing_listing_is_one_line(torch_home, no_network, monkeypatch):
    class BrokenListing(Teacher):
        @classmethod
        def weights_sources(cls, **options):
            raise RuntimeError("the zoo moved\nsomewhere else")

    monkeypatch.setitem(TEACHERS, "zz-broken", BrokenListing)
    output = "\n".join(_teachers())
    for name in TEACHERS:
        assert f"\n{name} " in f"\n{output}"
    assert output.endswith(f"{'zz-broken':30s} \n    weights: cannot list them (the zoo moved somewhere else)")


def test_mediapipe_files_in_the_wheel_or_missing(monkeypatch):
    if importlib.util.find_spec("mediapipe") is not None:
        sources = MediaPipePoseTeacher.weights_sources()
        assert [source.local_path.name for source in sources] == ["pose_detection.tflite", "pose_landmark_full.tflite"]
        assert all(source.present and source.origin == "pip package mediapipe" for source in sources)
        heavy = MediaPipePoseTeacher.weights_sources(model_complexity=2)[1]
        assert not heavy.present and presence(heavy) == "missing"  # not shipped, and MediaPipe's download is not used
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *rest: None if name == "mediapipe" else real_find_spec(name, *rest))
    sources = MediaPipePoseTeacher.weights_sources()
    assert [presence(source) for source in sources] == ["missing", "missing"]
    assert all("pip install distinit[pose]" in source.origin and source.local_path is None for source in sources)


def test_presence_words(torch_home, monkeypatch):
    assert presence(WeightsSource("x", "pip package y", None, True)) == "present"
    assert presence(WeightsSource("x", "hf-hub:timm/vit", None, False)) == "not downloaded yet: fetched on first use"
    assert presence(WeightsSource("x", "pip package y", None, False)) == "missing"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert presence(WeightsSource("x", RESNET50_URL, None, False)) == "offline: missing"


def test_listing_works_without_the_optional_packages():
    """In a fresh interpreter where the optional packages cannot be imported (None in sys.modules makes `import`
    fail and find_spec say absent): every teacher is still listed, each with its weights lines."""
    optional = ("mediapipe", "detectron2", "open_clip", "timm", "huggingface_hub")
    script = (
        "import sys\n"
        f"sys.modules.update(dict.fromkeys({optional!r}))\n"
        "from click.testing import CliRunner\n"
        "from distinit.pipeline.cli import main\n"
        "from distinit.extract.teachers import list_teachers\n"
        "result = CliRunner().invoke(main, ['teachers'])\n"
        "assert result.exit_code == 0, result.output\n"
        "names = [line.split()[0] for line in result.output.splitlines() if not line.startswith(' ')]\n"
        "assert names == list_teachers(), (names, result.output)\n"
        "print(result.output)\n"
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    output = completed.stdout
    assert "Traceback" not in output
    assert "weights: BlazePose pose_detection.tflite: missing\n      from pip package mediapipe" in output
