"""YAML + dotted overrides → a validated `Config`.

Unknown keys, wrong types and values outside their allowed set are errors at load time, each naming
the dotted key, so a typo never surfaces hours into a run.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from mmc_ray.config.sections import Config, ConfigError

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parents[2] / "configs" / "tiny-cpu.yaml"


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check and convert one YAML value to the field's declared type."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return _build(tp, value, key)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not allowed; choose one of {list(allowed)}")
        return value
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _convert(value, args[0], key)
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item_type = typing.get_args(tp)[0]
        return tuple(_convert(v, item_type, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads "3e-4" (no dot) as a string; people write learning rates that way
            return float(value)
        except ValueError:
            pass
    if tp in (int, float, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported config type {tp}")


def _fields_below(cls: type, path: str = "") -> Iterator[tuple[str, str]]:
    """(name, dotted path relative to `cls`) of every field of `cls` and of the sections below it."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        here = f"{path}.{f.name}" if path else f.name
        yield f.name, here
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _fields_below(hints[f.name], here)


def _unknown_key(cls: type, key: str, prefix: str) -> ConfigError:
    where = f"{prefix}." if prefix else ""
    deeper = [path for name, path in _fields_below(cls) if name == key and "." in path]
    if deeper:  # e.g. a backend's key written at the engine's top level
        return ConfigError(f"unknown key {where}{key}; it lives at {where}{deeper[0]}")
    names = [f.name for f in dataclasses.fields(cls)]
    return ConfigError(f"unknown key {where}{key}; allowed keys here: {names}")


def _build(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise _unknown_key(cls, unknown[0], prefix)
    kwargs = {k: _convert(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        # Validators name keys relative to their own dataclass; prefix them with where it sits.
        if prefix and not str(e).startswith(prefix):
            raise ConfigError(f"{prefix}.{e}") from None
        raise
    except ValueError as e:  # dataclasses defined outside this package validate with ValueError
        raise ConfigError(f"{prefix or 'config'}: {e}") from None


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides to a nested dict; values are parsed as YAML scalars/lists."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form dotted.key=value")
        parts = key.strip().split(".")
        node = data
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                section = ".".join(parts[: depth + 1])
                raise ConfigError(f"override {item!r}: {section} is not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    return data


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Load a YAML config (default: configs/tiny-cpu.yaml) and apply dotted overrides."""
    path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return _build(Config, apply_overrides(data, overrides))


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) suitable for YAML/JSON dumps and run records."""
    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(dataclasses.asdict(cfg))
