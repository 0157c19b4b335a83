"""The config's error type and its value checks: each names the field and what it accepts, in one line."""
from __future__ import annotations

import math
from pathlib import Path


class ConfigError(ValueError):
    """A config value that cannot work; the message names the field."""


def checked(check, value, field_name: str):
    """An engine check (ift/settings.py: raises ValueError naming `field_name`) as a ConfigError."""
    try:
        return check(value, field_name)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def need(node: dict, key: str, where: str):
    if not isinstance(node, dict) or key not in node:
        raise ConfigError(f"{where}.{key} is missing from the config")
    return node[key]


def integer(value, field_name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{field_name} must be an integer >= {minimum}, got {value!r}")
    return value


def boolean(node: dict, key: str, field_name: str, default: bool) -> bool:
    """A real boolean only: `bool('false')` is True, so strings, numbers and null are refused (YAML and
    command-line true/false arrive as booleans through OmegaConf)."""
    value = node.get(key, default) if isinstance(node, dict) else default
    if not isinstance(value, bool):
        raise ConfigError(f"{field_name} must be true or false, got {value!r}")
    return value


def number(value, field_name: str, what: str, ok) -> float:
    """A finite int or float (not a bool) for which ok(value) holds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
        raise ConfigError(f"{field_name} must be a finite number {what}, got {value!r}")
    return float(value)


def choice(value, field_name: str, choices) -> str:
    if value not in choices:
        raise ConfigError(f"{field_name}={value!r} is unknown; choose one of {list(choices)}")
    return value


def setting(value, field_name: str, default):
    """A method setting, checked by the type of its default: an integer >= 1 or a finite number > 0."""
    if isinstance(default, bool):
        return boolean({"v": value}, "v", field_name, default)
    if isinstance(default, int):
        return integer(value, field_name, 1)
    if isinstance(default, float):
        return number(value, field_name, "> 0", lambda x: x > 0)
    return value


def directories(value, field_name: str, base: Path, example: str) -> tuple[Path, ...]:
    """A list of directories (relative to `base`, the launch directory); [] or null: none."""
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or \
            not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{field_name} must be a list of results-store directories, e.g. {example}, got {value!r}")
    return tuple((base / Path(v).expanduser()).resolve() for v in value)
