"""Typed configs: YAML defaults, CLI overrides, unknown keys and wrong types rejected."""

import dataclasses
from pathlib import Path

import pytest

from distinit.pipeline.config import build_config, config_to_dict, load_config, parse_overrides
from distinit.pipeline.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class ExampleConfig:
    seed: int = 0
    rate: float = 2.0
    name: str = "x"
    flag: bool = False
    classes: tuple[str, ...] = ("a", "b")
    limit: int | None = None
    out: Path = Path("out")


def test_defaults_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 3\nrate: 4\nclasses: [p, q, r]\n")
    config = load_config(ExampleConfig, path, {"seed": 7, "limit": 5})
    assert config == ExampleConfig(seed=7, rate=4.0, classes=("p", "q", "r"), limit=5)
    assert isinstance(config.rate, float)


def test_unknown_key_names_it_and_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("sed: 3\n")
    with pytest.raises(ConfigError, match=r"c.yaml.*unknown option\(s\) sed.*known: .*seed"):
        load_config(ExampleConfig, path)


@pytest.mark.parametrize(
    "values, message",
    [({"seed": "3"}, "expected an integer"), ({"seed": 1.5}, "expected an integer"), ({"flag": "yes"}, "true or false"),
     ({"rate": "fast"}, "expected a number"), ({"name": 3}, "expected a string"), ({"seed": True}, "expected an integer")],
)
def test_wrong_types_are_rejected(values, message):
    with pytest.raises(ConfigError, match=message):
        build_config(ExampleConfig, values)


def test_overrides_parse_yaml_scalars_and_comma_lists():
    overrides = parse_overrides(["seed=4", "rate=0.5", "flag=true", "classes=u,v", "limit=null"])
    config = build_config(ExampleConfig, overrides)
    assert (config.seed, config.rate, config.flag, config.classes, config.limit) == (4, 0.5, True, ("u", "v"), None)
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["seed"])


def test_a_home_path_override_is_expanded_as_an_unquoted_shell_word_would_be(monkeypatch):
    monkeypatch.setenv("HOME", "/home/researcher")
    overrides = parse_overrides(["annotations=~/k400/annotations", "name=a~b", "pretrained=''"])
    assert overrides == {"annotations": "/home/researcher/k400/annotations", "name": "a~b", "pretrained": ""}


def test_missing_or_broken_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(ExampleConfig, tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("seed: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(ExampleConfig, broken)


def test_config_to_dict_is_plain():
    assert config_to_dict(ExampleConfig()) == {
        "seed": 0, "rate": 2.0, "name": "x", "flag": False, "classes": ["a", "b"], "limit": None, "out": "out",
    }
