"""`make setup`'s TORCH build choice, read off `make -n` dry runs into a temporary VENV (nothing is installed):
TORCH=cpu or cuXYZ installs requirements.txt's torch and torchvision with that build's label from PyTorch's index
before the rest, the default adds no step (PyPI's wheel), another TORCH re-runs setup and replaces the build, and an
unknown one is refused in one line before anything runs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUILDS = ("cpu", "cu126", "cu130", "cu132")

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def _pins() -> dict[str, str]:
    lines = (line.split("#", 1)[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines())
    return dict(line.split("==") for line in lines if line.startswith(("torch==", "torchvision==")))


def make(venv: Path, *variables: str, dry_run: bool = True) -> subprocess.CompletedProcess:
    # DETECTRON2_WHEEL= : no wheel to hash; PYTHON=false: were a recipe to run for real, it would stop at once.
    command = ["make", "--no-print-directory", *(["-n"] if dry_run else []), "setup", f"VENV={venv}",
               "DETECTRON2_WHEEL=", "PYTHON=false", *variables]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)


def pip_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if " -m pip " in line]


@pytest.mark.parametrize("build", BUILDS)
def test_a_torch_build_comes_from_its_index_before_the_rest(tmp_path, build):
    result = make(tmp_path / "venv", f"TORCH={build}")
    assert result.returncode == 0, result.stderr
    lines = pip_lines(result.stdout)
    (torch_line,) = [line for line in lines if "torch==" in line]
    pins = _pins()
    assert f"torch=={pins['torch']}+{build} torchvision=={pins['torchvision']}+{build}" in torch_line
    assert f"--index-url https://download.pytorch.org/whl/{build}" in torch_line and "--no-deps" in torch_line
    assert lines.index(torch_line) < next(i for i, line in enumerate(lines) if "-r requirements.txt" in line)


def test_the_default_is_pypi_s_wheel_as_before(tmp_path):
    result = make(tmp_path / "venv")
    assert result.returncode == 0, result.stderr
    assert "--index-url" not in result.stdout and "torch==" not in result.stdout
    assert any("-r requirements.txt" in line for line in pip_lines(result.stdout))


def test_another_torch_reruns_setup_and_replaces_the_build(tmp_path):
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / ".detectron2-wheel").write_text("none\n")
    (venv / ".torch-default").touch()
    (venv / ".installed").touch()
    later = time.time() + 60  # newer than the requirements files, whatever else touches them meanwhile
    os.utime(venv / ".installed", (later, later))
    assert pip_lines(make(venv).stdout) == []  # set up, same build: nothing to do

    lines = make(venv, "TORCH=cu126").stdout.splitlines()
    uninstall = next(i for i, line in enumerate(lines) if "pip uninstall -q -y torch torchvision" in line)
    assert uninstall < next(i for i, line in enumerate(lines) if "torch==" in line and "/whl/cu126" in line)
    assert f"rm -f {venv}/.torch-default" in lines


@pytest.mark.parametrize("value", ["cu999", "CPU", "cpu cu126", ""])
def test_an_unknown_torch_is_refused_in_one_line(tmp_path, value):
    for dry_run in (True, False):
        result = make(tmp_path / "venv", f"TORCH={value}", dry_run=dry_run)
        assert result.returncode != 0
        message = [line for line in result.stderr.splitlines() if not line.startswith(("make: ", "make["))]
        assert len(message) == 1 and f"TORCH={value} is not one of:" in message[0], result.stderr
        assert re.findall(r"\b(?:default|cpu|cu\d+)\b", message[0].split("one of:")[1]) == ["default", *BUILDS]
        assert not any(" -m venv " in line or " -m pip " in line for line in result.stdout.splitlines())
    assert not (tmp_path / "venv" / "bin").exists()
