"""Installing distinit puts one top-level name, `distinit`, in site-packages, so it installs beside Hugging Face's
`evaluate` (or any `pipeline`, `extract`, `distill` package) without either overwriting the other.

How: the checkout keeps its stage folders at the top (pipeline/ extract/ distill/ evaluate/), and pyproject.toml's
[tool.setuptools] package-dir maps each onto a subpackage of `distinit` (distinit.evaluate -> evaluate/, ...).
`distinit` itself is an implicit namespace package (no distinit/ folder, no __init__.py), so the wheel's files all
lie under distinit/. Top-level packages named after the folders would put a generic `evaluate` in site-packages,
the name Hugging Face's metric library installs under. A mapped package-dir cannot be found by setuptools'
automatic discovery, so pyproject.toml lists every package: the fast test checks that list against the folders.

The slow test builds the wheel, installs it (not editable) into a fresh venv beside Hugging Face's `evaluate` from
PyPI, and imports both. The venv sees the running environment's packages (torch ...) through a .pth file instead of
reinstalling them; pip counts them as installed. It skips, saying so, where PyPI cannot be reached.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]
STAGE_NAMES = ("pipeline", "extract", "distill", "evaluate")
# Hugging Face's evaluate and the versions pip resolves for it beside requirements.txt (numpy 1.26.4): pyarrow 24 and
# newer need NumPy 2 at import (their metadata does not say so), datasets 5 needs pyarrow 24, and pip downloads two
# pandas 3.1 releases before it settles on 3.0.6. Pinned, pip downloads the same ~62 MB every run and never backtracks.
HUGGING_FACE_EVALUATE = ("evaluate==0.4.6", "datasets==4.1.1", "pyarrow==23.0.1", "pandas==3.0.6")


def _package_folders() -> dict[str, Path]:
    """Every package the wheel must carry -> its folder: each folder under a mapped root holding an __init__.py,
    and each data-only folder that [tool.setuptools.package-data] names (pipeline/cluster's SLURM recipes)."""
    folders = {}
    for package, root in SETUPTOOLS["package-dir"].items():
        for init in sorted((REPO / root).rglob("__init__.py")):
            relative = init.parent.relative_to(REPO / root)
            folders[".".join((package, *relative.parts))] = init.parent
    for package in SETUPTOOLS.get("package-data", {}):
        mapped = next(name for name in SETUPTOOLS["package-dir"] if package == name or package.startswith(name + "."))
        subfolder = package.removeprefix(mapped).lstrip(".").replace(".", "/")
        folders[package] = REPO / SETUPTOOLS["package-dir"][mapped] / subfolder
    return folders


def test_the_stage_folders_are_mapped_under_distinit():
    assert SETUPTOOLS["package-dir"] == {f"distinit.{name}": name for name in STAGE_NAMES}
    assert not (REPO / "distinit").exists(), "distinit is an implicit namespace: a distinit/ folder would shadow it"


def test_packages_list_every_package_folder():
    listed = SETUPTOOLS["packages"]
    assert len(listed) == len(set(listed)), f"listed twice: {sorted({p for p in listed if listed.count(p) > 1})}"
    expected = _package_folders()
    missing, unknown = sorted(set(expected) - set(listed)), sorted(set(listed) - set(expected))
    assert not missing and not unknown, (
        f"pyproject.toml [tool.setuptools] packages: add {missing} (folders with an __init__.py or package-data), "
        f"remove {unknown} (no such package folder)")


def test_every_folder_with_modules_is_a_package():
    """A folder of .py files without an __init__.py would be left out of the wheel without a word."""
    for root in SETUPTOOLS["package-dir"].values():
        folders = {path.parent for path in (REPO / root).rglob("*.py") if "__pycache__" not in path.parts}
        for folder in sorted(folders):
            assert (folder / "__init__.py").is_file(), f"{folder.relative_to(REPO)}/ holds modules but no __init__.py"


def test_package_data_names_files_that_exist():
    folders = _package_folders()
    for package, patterns in SETUPTOOLS["package-data"].items():
        assert any(any(folders[package].glob(pattern)) for pattern in patterns), (package, patterns)


# --- the wheel, installed beside Hugging Face's evaluate -----------------------------------------------------------


def _run(command: list[str], timeout: float = 300, **options) -> subprocess.CompletedProcess:
    """Runs it, bounded (a stalled index must fail the test, not hang CI), and asserts it succeeded."""
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **options)
    assert result.returncode == 0, f"{' '.join(map(str, command))}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _build_wheel(tmp_path: Path) -> Path:
    """pip wheel from a copy of the sources (an in-tree build would leave build/ in the checkout)."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, source / name)
    for name in SETUPTOOLS["package-dir"].values():
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"),
          str(source)])
    (wheel,) = (tmp_path / "dist").glob("distinit-*.whl")
    return wheel


def _venv_seeing_this_environment(tmp_path: Path) -> Path:
    """A venv without pip whose .pth file adds this environment's packages, minus distinit's editable install and
    any evaluate (each entry linked into a folder of its own), so nothing heavy is installed twice."""
    visible = tmp_path / "visible-packages"
    visible.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        name = entry.name.lower()
        if not name.startswith(("distinit", "__editable__", "evaluate")) and name.split(".")[0] not in STAGE_NAMES \
                and not name.endswith(".pth"):
            (visible / entry.name).symlink_to(entry)
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    (_site_packages(venv) / "this-environment.pth").write_text(f"{visible}\n")
    return venv


def _site_packages(venv: Path) -> Path:
    script = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    return Path(_run([str(venv / "bin" / "python"), "-I", "-c", script]).stdout.strip())


def _pip(venv: Path, *arguments: str) -> list[str]:
    return [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), *arguments]


IMPORTS = """
import importlib.util, json
import evaluate, distinit.evaluate
print(json.dumps({"evaluate": evaluate.__file__, "evaluate_load": callable(getattr(evaluate, "load", None)),
                  "distinit_evaluate": distinit.evaluate.__file__, "distinit_path": list(distinit.__path__),
                  "generic": {name: importlib.util.find_spec(name) is not None
                              for name in ("pipeline", "extract", "distill")}}))
"""


def _assert_wheel_holds_only_distinit(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        dist_info = next(name.split("/")[0] for name in names if name.endswith(".dist-info/RECORD"))
        top_level = {name.split("/")[0] for name in names}
        assert top_level == {"distinit", dist_info}, sorted(top_level)
        assert archive.read(f"{dist_info}/top_level.txt").decode().split() == ["distinit"]
    assert "distinit/__init__.py" not in names, "distinit must stay an implicit namespace package"
    recipes = {path.name for path in (REPO / "pipeline" / "cluster").glob("*.sbatch")}
    assert recipes and recipes <= {Path(name).name for name in names if name.startswith("distinit/pipeline/cluster/")}


@pytest.mark.slow
def test_wheel_installs_beside_hugging_face_evaluate(tmp_path):
    wheel = _build_wheel(tmp_path)
    _assert_wheel_holds_only_distinit(wheel)

    venv = _venv_seeing_this_environment(tmp_path)
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    # pip counts the packages the .pth file shows as installed: torch needs nothing from the index.
    report = tmp_path / "report.json"
    _run(_pip(venv, "install", "-q", "--dry-run", "--no-index", "--report", str(report), "torch", "numpy"),
         env=environment)
    assert json.loads(report.read_text())["install"] == []
    _run(_pip(venv, "install", "-q", "--no-compile", "--no-deps", str(wheel)), env=environment)

    probe = subprocess.run(_pip(venv, "download", "-q", "--no-deps", "--retries", "0", "--timeout", "20", "-d",
                                str(tmp_path / "probe"), HUGGING_FACE_EVALUATE[0]), capture_output=True, text=True,
                           env=environment, timeout=120)
    if probe.returncode != 0:
        reason = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"PyPI unreachable (pip download {HUGGING_FACE_EVALUATE[0]}: {reason}): the wheel was built and "
                    "installed, but not beside Hugging Face's evaluate")
    # --no-compile: byte-compiling pandas and pyarrow took longer (9 s) than importing them uncompiled once.
    _run(_pip(venv, "install", "-q", "--no-compile", *HUGGING_FACE_EVALUATE, "-c", str(REPO / "requirements.txt")),
         env=environment)

    site_packages = _site_packages(venv)
    python = str(venv / "bin" / "python")
    imported = json.loads(_run([python, "-I", "-c", IMPORTS], cwd=tmp_path, env=environment).stdout)
    assert imported["evaluate_load"] and Path(imported["evaluate"]).parent == site_packages / "evaluate"
    assert Path(imported["distinit_evaluate"]) == site_packages / "distinit" / "evaluate" / "__init__.py"
    assert imported["distinit_path"] == [str(site_packages / "distinit")]
    assert imported["generic"] == {"pipeline": False, "extract": False, "distill": False}

    # Our files all lie under distinit/ (and bin/distinit); the evaluate/ folder is Hugging Face's.
    (record,) = site_packages.glob("distinit-*.dist-info/RECORD")
    ours = {line.split(",")[0].split("/")[0] for line in record.read_text().splitlines()}
    assert ours == {"distinit", record.parent.name, ".."}, ours
    assert not any((site_packages / name).exists() for name in ("pipeline", "extract", "distill"))
    (evaluate_record,) = site_packages.glob("evaluate-*.dist-info/RECORD")
    assert "evaluate/__init__.py" in evaluate_record.read_text()

    help_text = _run([str(venv / "bin" / "distinit"), "--help"], cwd=tmp_path, env=environment).stdout
    assert "Usage: distinit" in help_text
