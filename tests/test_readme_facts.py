"""Figures the README states about the defaults agree with the configs and dataclasses they describe."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import yaml

from distinit.distill.config import DistillConfig

ROOT = Path(__file__).resolve().parent.parent


def test_readme_temperature_matches_the_configs():
    readme = (ROOT / "README.md").read_text()
    stated = dict((config, float(value)) for value, config in
                  re.findall(r"T = ([0-9.]+) \(`(configs/[a-z-]+\.yaml)`", readme))
    assert set(stated) == {"configs/distill.yaml", "configs/demo-distill.yaml"}, stated
    for config, value in stated.items():
        assert yaml.safe_load((ROOT / config).read_text())["temperature"] == value, config
    default = {field.name: field.default for field in dataclasses.fields(DistillConfig)}["temperature"]
    assert stated["configs/distill.yaml"] == default
    # No other sentence may call a temperature "the default".
    assert not re.search(r"T = [0-9.]+, the default", readme)
