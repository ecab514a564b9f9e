"""`make setup`'s TORCH build choice, read off `make -n` dry runs into a temporary VENV (nothing is installed):
TORCH=cpu or cuXYZ installs requirements.txt's torch and torchvision with that build's label from PyTorch's index
before the rest, the default adds no step (PyPI's wheel), a plain make keeps the build the venv records, another
TORCH re-runs setup and replaces the build, and an unknown one is refused in one line before anything runs. Real runs
with a fake Python (its version, and a pip that logs and can fail): a failed switch re-runs next time, and a Python
outside pyproject.toml's requires-python is refused in one line before the venv is made."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUILDS = ("cpu", "cu126", "cu130", "cu132")

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def _pins() -> dict[str, str]:
    lines = (line.split("#", 1)[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines())
    return dict(line.split("==") for line in lines if line.startswith(("torch==", "torchvision==")))


def make(venv: Path, *variables: str, dry_run: bool = True, target: str = "setup", python: str = "false",
         env: dict[str, str] | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    # DETECTRON2_WHEEL= : no wheel to hash; PYTHON=false: were a recipe to run for real, it would stop at once.
    # Not the make running these tests (make test TORCH=...), nor a TORCH in the environment, sets anything here.
    clean = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "TORCH")}
    command = ["make", "--no-print-directory", *(["-n"] if dry_run else []), target, f"VENV={venv}",
               "DETECTRON2_WHEEL=", f"PYTHON={python}", *variables]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=60, env={**clean, **(env or {})})


def pip_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if " -m pip " in line]


def message_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if not line.startswith(("make: ", "make["))]


def set_up(venv: Path, build: str) -> None:
    """A venv make counts as set up with `build` (nothing in it is real)."""
    venv.mkdir(parents=True, exist_ok=True)
    (venv / ".detectron2-wheel").write_text("none\n")
    (venv / f".torch-{build}").touch()
    (venv / ".installed").touch()
    later = time.time() + 60  # newer than the requirements files, whatever else touches them meanwhile
    os.utime(venv / ".installed", (later, later))


# A Python for real runs: `--version` prints FAKE_VERSION; anything else (-m venv, -m pip ...) appends its arguments to
# FAKE_LOG and succeeds, unless they contain FAKE_FAIL.
FAKE_PYTHON = """#!/bin/sh
if [ "$1" = --version ]; then echo "Python $FAKE_VERSION"; exit 0; fi
echo "$*" >> "$FAKE_LOG"
if [ -n "$FAKE_FAIL" ]; then case "$*" in *"$FAKE_FAIL"*) exit 1;; esac; fi
"""


def fake_python(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "python"
    path.write_text(FAKE_PYTHON)
    path.chmod(0o755)
    return path


def logged(log: Path) -> list[str]:
    """What the fake Python ran: -m venv and -m pip lines (not make's own queries)."""
    return [line for line in log.read_text().splitlines() if line.startswith(("-m venv", "-m pip"))] if log.exists() else []


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


def test_the_default_path_runs_what_it_ran_before_torch_existed(tmp_path):
    # A new venv, TORCH unset: PyPI's wheel and no extra pip step (what CI runs).
    venv = tmp_path / "venv"
    lines = make(venv).stdout.splitlines()
    assert pip_lines("\n".join(lines)) == [
        f"{venv}/bin/python -m pip install -q --upgrade pip",
        f"{venv}/bin/python -m pip install -q -r requirements.txt",
        f"{venv}/bin/python -m pip install -q -r requirements-pose.txt",
        f"{venv}/bin/python -m pip install -q --no-deps -e .",
    ]
    assert f"rm -f {venv}/.installed && touch {venv}/.torch-default" in lines
    assert lines[-1] == f"touch {venv}/.installed"


def test_another_torch_reruns_setup_and_replaces_the_build(tmp_path):
    venv = tmp_path / "venv"
    set_up(venv, "default")
    assert pip_lines(make(venv).stdout) == []  # set up, same build: nothing to do

    lines = make(venv, "TORCH=cu126").stdout.splitlines()
    # Before torch is touched, .installed and the old build's stamp go and the new one is written: were the run to
    # fail from there on, make re-runs it (the old build's stamp would say the uninstalled torch is in).
    switch = lines.index(f"rm -f {venv}/.installed {venv}/.torch-default && touch {venv}/.torch-cu126")
    uninstall = next(i for i, line in enumerate(lines) if "pip uninstall -q -y torch torchvision" in line)
    install = next(i for i, line in enumerate(lines) if "torch==" in line and "/whl/cu126" in line)
    assert switch < uninstall < install
    assert not any(".torch-" in line for line in lines[switch + 1:])
    assert lines[-1] == f"touch {venv}/.installed"


@pytest.mark.parametrize("build", BUILDS)
def test_a_plain_make_keeps_the_build_the_venv_records(tmp_path, build):
    # After make setup TORCH=<build>, every target runs setup with TORCH unset: it must not reinstall PyPI's default.
    venv = tmp_path / "venv"
    set_up(venv, build)
    result = make(venv)
    assert result.returncode == 0, result.stderr
    assert pip_lines(result.stdout) == [], result.stdout
    assert f"TORCH={build} " in make(venv, target="help", dry_run=False).stdout
    assert "TORCH=default " in make(tmp_path / "new", target="help", dry_run=False).stdout

    back = make(venv, "TORCH=default").stdout  # naming another build still switches
    assert any("pip uninstall -q -y torch torchvision" in line for line in pip_lines(back))
    assert f"rm -f {venv}/.installed {venv}/.torch-{build} && touch {venv}/.torch-default" in back.splitlines()


def test_a_failed_switch_reruns_next_time(tmp_path):
    # Real runs: TORCH=cu126 set up, then TORCH=cu132's install fails after the uninstall. torch is gone, so make
    # must not count the venv as set up, neither with cu126 nor with cu132.
    venv = tmp_path / "venv"
    set_up(venv, "cu126")
    os.utime(venv / ".installed")  # now: not so far ahead that a stamp written by this run would be older
    python = fake_python(venv / "bin")
    log = tmp_path / "log"
    env = {"FAKE_VERSION": "3.11.9", "FAKE_LOG": str(log), "FAKE_FAIL": "+cu132"}

    failed = make(venv, "TORCH=cu132", dry_run=False, python=str(python), env=env)
    assert failed.returncode != 0
    ran = logged(log)
    assert ran[-2:] == ["-m pip uninstall -q -y torch torchvision", next(line for line in ran if "+cu132" in line)]
    assert not (venv / ".installed").exists() and not (venv / ".torch-cu126").exists()
    assert (venv / ".torch-cu132").exists()  # what it was installing: a plain make retries it

    back = pip_lines(make(venv, "TORCH=cu126").stdout)
    assert any("uninstall" in line for line in back) and any("+cu126" in line for line in back)
    retry = pip_lines(make(venv).stdout)
    assert any("+cu132" in line for line in retry) and any("-e ." in line for line in retry)

    log.unlink()
    done = make(venv, "TORCH=cu126", dry_run=False, python=str(python), env={**env, "FAKE_FAIL": ""})
    assert done.returncode == 0, done.stderr
    ran = logged(log)
    assert ran.index("-m pip uninstall -q -y torch torchvision") < next(i for i, line in enumerate(ran) if "+cu126" in line)
    assert sorted(path.name for path in venv.glob(".torch-*")) == [".torch-cu126"]
    assert pip_lines(make(venv).stdout) == []  # set up again, and a plain make keeps cu126


def _requires_python() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]


@pytest.mark.parametrize("version", ["3.12.1", "3.12.0", "3.10.14", "2.7.18"])
def test_a_python_outside_requires_python_is_refused_before_the_venv(tmp_path, version):
    log = tmp_path / "log"
    python = fake_python(tmp_path / "fake")
    result = make(tmp_path / "venv", dry_run=False, python=str(python),
                  env={"FAKE_VERSION": version, "FAKE_LOG": str(log)})
    assert result.returncode != 0
    message = message_lines(result.stderr)
    assert len(message) == 1, result.stderr
    assert f"Python {version}," in message[0] and f"needs Python {_requires_python()} " in message[0]
    assert "PYTHON=python3.11 " in message[0]
    assert logged(log) == [] and not (tmp_path / "venv" / "bin").exists()
    if version == "3.12.1":  # docs/install.md shows this refusal as python3 gives it
        assert message[0].replace(str(python), "python3") in (REPO / "docs" / "install.md").read_text()


@pytest.mark.parametrize("version", ["3.11.0", "3.11.9"])
def test_a_python_inside_requires_python_goes_on(tmp_path, version):
    log = tmp_path / "log"
    python = fake_python(tmp_path / "fake")
    result = make(tmp_path / "venv", dry_run=False, python=str(python),
                  env={"FAKE_VERSION": version, "FAKE_LOG": str(log)})
    assert "make setup:" not in result.stderr.replace("make setup: no Detectron2", ""), result.stderr
    assert logged(log)[:1] == [f"-m venv {tmp_path / 'venv'}"]


def test_the_python_check_reads_pyproject_and_comes_first(tmp_path):
    # The range is pyproject.toml's requires-python, read when setup runs: a copy that asks for 3.12 refuses 3.11.
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("Makefile", "requirements.txt", "requirements-pose.txt", "requirements-detectron2.txt"):
        shutil.copy(REPO / name, copy / name)
    text = (REPO / "pyproject.toml").read_text()
    assert text.count(f'requires-python = "{_requires_python()}"') == 1
    (copy / "pyproject.toml").write_text(text.replace(_requires_python(), ">=3.12"))
    python = fake_python(tmp_path / "fake")
    result = make(tmp_path / "venv", dry_run=False, python=str(python), cwd=copy,
                  env={"FAKE_VERSION": "3.11.9", "FAKE_LOG": str(tmp_path / "log")})
    (message,) = message_lines(result.stderr)
    assert "Python 3.11.9, but distinit needs Python >=3.12 " in message and "PYTHON=python3.12 " in message

    (copy / "pyproject.toml").write_text(text.replace(f'requires-python = "{_requires_python()}"\n', ""))
    result = make(tmp_path / "venv", dry_run=False, python=str(python), cwd=copy,
                  env={"FAKE_VERSION": "3.11.9", "FAKE_LOG": str(tmp_path / "log")})
    assert result.returncode != 0 and message_lines(result.stderr) == [
        'make setup: cannot check requires-python "" in pyproject.toml']
    assert logged(tmp_path / "log") == []

    lines = make(tmp_path / "venv2").stdout.splitlines()  # dry run: the check is the recipe's first line
    check = next(i for i, line in enumerate(lines) if "requires-python" in line)
    assert check < next(i for i, line in enumerate(lines) if " -m venv " in line)


@pytest.mark.parametrize("value", ["cu999", "CPU", "cpu cu126", "", "%", "cu%", "cu12%"])
def test_an_unknown_torch_is_refused_in_one_line(tmp_path, value):
    for dry_run in (True, False):
        result = make(tmp_path / "venv", f"TORCH={value}", dry_run=dry_run)
        assert result.returncode != 0
        message = message_lines(result.stderr)
        assert len(message) == 1 and f"TORCH={value} is not one of:" in message[0], result.stderr
        assert re.findall(r"\b(?:default|cpu|cu\d+)\b", message[0].split("one of:")[1]) == ["default", *BUILDS]
        assert not any(" -m venv " in line or " -m pip " in line for line in result.stdout.splitlines())
    assert not (tmp_path / "venv" / "bin").exists()
