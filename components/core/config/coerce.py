"""Generic loading of typed dataclasses from YAML and plain mappings.

`from_mapping` builds any dataclass from nested dicts, refusing unknown keys and coercing
values to the fields' types; the run config (config.schema) and the deployment settings
(pipelines.settings) both load through it.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from typing import Any

from components.core.errors import ConfigError


# YAML 1.2 floats without a dot (1e-5, 3E+2): PyYAML follows YAML 1.1, where they are strings,
# and learning rates are written that way.
EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")


def read_yaml(path: str, what: str):
    """The YAML document in file `path` ({} when empty), read safely, with 1e-5 read as the
    number it is (see EXPONENT_FLOAT); ConfigError naming `what` (e.g. "config file") and the
    fix when it is missing or not YAML."""
    import yaml

    class Loader(yaml.SafeLoader):
        """SafeLoader plus YAML 1.2's exponent floats (the resolver table is per class)."""

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", EXPONENT_FLOAT, list("-+0123456789"))
    try:
        with open(path, encoding="utf-8") as handle:
            return yaml.load(handle, Loader=Loader) or {}
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist; pass the path of a YAML file")
    except (IsADirectoryError, UnicodeDecodeError, PermissionError) as error:
        raise ConfigError(f"{what} {path} cannot be read as text ({type(error).__name__}); "
                          f"pass the path of a YAML file")
    except yaml.YAMLError as error:
        raise ConfigError(f"{what} {path} is not valid YAML: {' '.join(str(error).split())}")


def from_mapping(cls, values: dict, prefix: str = ""):
    """Builds dataclass `cls` from a mapping: unknown keys are ConfigErrors naming the known ones,
    values are coerced to the fields' types (bool, int, float, str, list[T], dict[str, str],
    nested dataclasses); `prefix` names where the mapping sits in error messages."""
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown config key {prefix}{unknown[0]}; known keys here: "
                          f"{', '.join(sorted(names))}")
    return cls(**{name: _coerce(value, hints[name], f"{prefix}{name}")
                  for name, value in values.items()})


def _coerce(value: Any, kind: type, name: str) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name}={value!r} must be true or false")
    if kind is int:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value == int(value):
            return int(value)
        raise ConfigError(f"{name}={value!r} must be a whole number")
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{name}={value!r} must be a number")
    if dataclasses.is_dataclass(kind):
        return from_mapping(kind, value, f"{name}.")
    if typing.get_origin(kind) is list:
        if isinstance(value, (list, tuple)):
            item = typing.get_args(kind)[0]
            return [_coerce(v, item, f"{name}[{i}]") for i, v in enumerate(value)]
        raise ConfigError(f"{name}={value!r} must be a list")
    if typing.get_origin(kind) is dict:
        if isinstance(value, dict):
            return {str(key): _coerce(item, str, f"{name}.{key}") for key, item in value.items()}
        raise ConfigError(f"{name}={value!r} must be a mapping")
    if kind is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{name}={value!r} must be a string")
    return value


def deep_merge(base: dict, overrides: dict) -> dict:
    """`base` with `overrides` applied, nested dicts merged key by key (neither is changed)."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
