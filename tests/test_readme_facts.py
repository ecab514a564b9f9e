"""Figures the docs state about the defaults agree with the configs and dataclasses they describe."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import yaml

from distinit.distill.config import DistillConfig

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_the_stated_temperatures_match_the_configs():
    loss_page = (ROOT / "docs" / "distill.md").read_text()  # stage two's "The loss"
    stated = dict((config, float(value)) for value, config in
                  re.findall(r"T = ([0-9.]+) \(`(configs/[a-z-]+\.yaml)`", loss_page))
    assert set(stated) == {"configs/distill.yaml", "configs/demo-distill.yaml"}, stated
    for config, value in stated.items():
        assert yaml.safe_load((ROOT / config).read_text())["temperature"] == value, config
    default = {field.name: field.default for field in dataclasses.fields(DistillConfig)}["temperature"]
    assert stated["configs/distill.yaml"] == default
    # No other sentence, on any page, may call a temperature "the default".
    for page in PAGES:
        assert not re.search(r"T = [0-9.]+, the default", page.read_text()), page.name
