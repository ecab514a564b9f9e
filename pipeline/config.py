"""Typed stage configs: a frozen dataclass per stage, defaults from YAML, overrides from the CLI.

Unknown keys and values of the wrong type are errors (never silently ignored), so a typo in a
config file cannot quietly train the wrong model.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

from distinit.pipeline.errors import ConfigError

ConfigT = TypeVar("ConfigT")


def load_config(
    config_class: type[ConfigT],
    yaml_path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ConfigT:
    """Build `config_class` from its defaults, then the YAML file, then `overrides` (last wins)."""
    values: dict[str, Any] = {}
    source = "defaults"
    if yaml_path is not None:
        source = str(yaml_path)
        values.update(_read_yaml(Path(yaml_path)))
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key.replace("-", "_")] = value
    return build_config(config_class, values, source=source)


def build_config(config_class: type[ConfigT], values: Mapping[str, Any], source: str = "config") -> ConfigT:
    fields = {field.name: field for field in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"{source}: unknown option(s) {', '.join(unknown)} for {config_class.__name__}; "
            f"known: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(config_class)
    checked = {name: _coerce(value, hints[name], f"{source}: option {name}") for name, value in values.items()}
    return config_class(**checked)


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain JSON/YAML-ready dict (tuples become lists, paths become strings)."""
    result = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, Path):
            value = str(value)
        result[field.name] = value
    return result


def seconds_from_environment(variable: str, default: float) -> float:
    """A positive number of seconds from the environment variable `variable`; `default` when it is unset or empty;
    anything else a one-line ConfigError naming it."""
    text = os.environ.get(variable, "").strip()
    if not text:
        return default
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0:
        raise ConfigError(f"{variable}={text!r}: expected a positive number of seconds (unset it for {default:g})")
    return seconds


def parse_overrides(pairs: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """`key=value` strings from the command line; values are parsed as YAML scalars (`3`, `0.1`, `true`). A value
    starting with `~/` is a path under the home folder, as a shell would have expanded it unquoted (make passes
    each pair quoted)."""
    overrides = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} is not of the form key=value")
        key, text = pair.split("=", 1)
        if text.startswith("~/"):
            text = os.path.expanduser(text)
        overrides[key.strip().replace("-", "_")] = yaml.safe_load(text) if text else ""
    return overrides


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found; pass an existing YAML file")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of option: value at the top level")
    return loaded


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in arguments:
            return None
        errors = []
        for option in arguments:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is typing.Literal:
        if value not in arguments:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, arguments))}")
        return value
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [item.strip() for item in value.split(",") if item.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item_type = arguments[0] if arguments else Any
        return tuple(_coerce(item, item_type, where) for item in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if annotation is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise ConfigError(f"{where}: expected a path, got {value!r}")
    return value
