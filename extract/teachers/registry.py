"""Teachers registered by name, built by one constructor (timm's register_model / create_model)."""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable, TypeVar

from distinit.pipeline.errors import ConfigError, DistinitError
from distinit.extract.teachers.base import Teacher

TeacherClass = TypeVar("TeacherClass", bound=type)

TEACHERS: dict[str, type[Teacher]] = {}

# Arguments every teacher takes; the rest of a teacher's keyword arguments are its options.
_COMMON_ARGUMENTS = ("device", "weights")


def register_teacher(name: str) -> Callable[[TeacherClass], TeacherClass]:
    def register(teacher_class: TeacherClass) -> TeacherClass:
        if name in TEACHERS and TEACHERS[name] is not teacher_class:
            raise ValueError(f"teacher name {name!r} is already registered by {TEACHERS[name].__name__}")
        TEACHERS[name] = teacher_class
        return teacher_class

    return register


def list_teachers() -> list[str]:
    return sorted(TEACHERS)


def teacher_options(name: str) -> dict[str, Any]:
    """A teacher's options and their defaults (what `create_teacher(name, **options)` accepts)."""
    parameters = inspect.signature(_teacher_class(name).__init__).parameters
    return {
        parameter.name: parameter.default
        for parameter in parameters.values()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY and parameter.name not in _COMMON_ARGUMENTS
    }


def create_teacher(
    kind: str, *, name: str | None = None, device: Any = "cpu", weights: str | None = None, **options: Any
) -> Teacher:
    """Build the registered teacher `kind` as the instance `name` (default: `kind`), the name its HDF5 group,
    student head and loss weight key on. Option values given as strings (from the CLI) are converted to the type
    of the option's default."""
    instance = name or kind
    described = kind if instance == kind else f"{instance} ({kind})"
    defaults = teacher_options(kind)
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        known = ", ".join(sorted(defaults)) or "none"
        raise ConfigError(f"teacher {described} has no option {', '.join(unknown)}; its options are: {known}")
    converted = {key: _convert_option(described, key, value, defaults[key]) for key, value in options.items()}
    try:
        teacher = _teacher_class(kind)(device=device, weights=weights, **converted)
    except DistinitError as error:
        if instance == kind:
            raise
        # Constructors speak of `teacher <kind>`; the user wrote the instance, so name it too.
        raise type(error)(str(error).replace(f"teacher {kind}", f"teacher {described}", 1)) from error
    # Constructors name a teacher after its kind; the run's instance name is set here, once, for every teacher.
    teacher.kind = kind
    teacher.name = instance
    return teacher


def check_teacher_kinds(kinds: Iterable[str]) -> None:
    """ConfigError naming the known kinds for the first kind that is not registered."""
    for kind in kinds:
        _teacher_class(kind)


def _teacher_class(kind: str) -> type[Teacher]:
    if kind not in TEACHERS:
        raise ConfigError(f"unknown teacher {kind!r}; known teachers: {', '.join(list_teachers())}")
    return TEACHERS[kind]


def _convert_option(described: str, key: str, value: Any, default: Any) -> Any:
    if not isinstance(value, str) or default is None or isinstance(default, str):
        return value
    try:
        if isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        return type(default)(value)
    except ValueError:
        raise ConfigError(
            f"teacher {described} option {key}={value!r} is not of type {type(default).__name__}"
        ) from None
