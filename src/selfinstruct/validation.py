"""Checking a settings dataclass's values against its annotations, so that a wrong type or an
out-of-range value is a `ConfigError` naming the field, not a `TypeError` deep in a step."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

from selfinstruct.errors import ConfigError

Bounds = dict[str, tuple[float | None, float | None]]  # field -> (lowest, highest), inclusive


def check_values(settings: Any, bounds: Bounds | None = None) -> None:
    """Raise ConfigError naming the first field whose value is not of its annotated type or
    lies outside its bounds."""
    owner = type(settings).__name__
    try:
        hints = typing.get_type_hints(type(settings))
    except NameError:  # an annotation this module cannot resolve: check the bounds only
        hints = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        expected = hints.get(f.name, Any)
        if not _matches(value, expected):
            raise ConfigError(f"{owner}.{f.name}: expected {_describe(expected)}, got {value!r}")
        low, high = (bounds or {}).get(f.name, (None, None))
        if value is None or isinstance(value, bool):
            continue
        if (low is not None and value < low) or (high is not None and value > high):
            span = f"at least {low}" if high is None else f"from {low} to {high}"
            if low is None:
                span = f"at most {high}"
            raise ConfigError(f"{owner}.{f.name}: expected {span}, got {value!r}")


def _matches(value: Any, expected: Any) -> bool:
    if expected is Any:
        return True
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(expected))
    if expected is type(None):
        return value is None
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:  # an int is a fine float
        return isinstance(value, int | float) and not isinstance(value, bool)
    if expected is Path:
        return isinstance(value, str | Path)
    if origin in (list, tuple):
        args = [a for a in typing.get_args(expected) if a is not Ellipsis]
        return isinstance(value, list | tuple) and all(
            _matches(v, args[0] if args else Any) for v in value
        )
    if origin is dict:
        return isinstance(value, dict)
    if isinstance(expected, type):
        return isinstance(value, expected)
    return True  # a form this check does not know: leave it to the code that uses it


def _describe(expected: Any) -> str:
    if typing.get_origin(expected) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(expected))
    if expected is type(None):
        return "None"
    if isinstance(expected, type):
        return {"int": "an integer", "float": "a number", "bool": "True or False"}.get(
            expected.__name__, expected.__name__
        )
    return str(expected)
