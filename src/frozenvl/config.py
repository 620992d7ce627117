"""The config engine: typed dataclasses from YAML mappings, dotted ``key=value`` overrides, errors naming the key.

Every configuration of frozenvl is a dataclass read by :func:`from_dict`: values are coerced to the annotated
types (``5e-4`` read by YAML as a string becomes a float), nested dataclasses and lists of them are built
recursively, and an unknown key or a value of the wrong type raises :class:`ConfigError` naming the dotted key.
Overrides (``optim.lr=3e-4``, ``data.datasets.pairs.weight=0.5``) are parsed as YAML and checked against the same
schema before anything is built.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A bad configuration: one message naming the key and the problem."""


def check_choice(where: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{where} must be one of {', '.join(map(str, allowed))}; got {value!r}")


def check_positive(where: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{where} must be {'>= 0' if allow_zero else '> 0'}; got {value!r}")


def to_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as plain YAML/JSON-able data (the inverse of :func:`from_dict`)."""
    return dataclasses.asdict(config)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where} must be {' or '.join(_type_name(a) for a in args)}; got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping of {tp.__name__} fields; got {value!r}")
        return from_dict(tp, value, where)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list; got {value!r}")
        return [_coerce(item, v, f"{where}.{i}") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping; got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false; got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer; got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "5e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number; got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string; got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported field type {tp}")


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """A config dataclass from a (YAML) mapping: fields coerced to their annotated types, nested dataclasses built
    recursively, an unknown key an error naming it (``where`` is the dotted path of ``data`` in its tree)."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"unknown key {prefix}{unknown[0]}; {cls.__name__} has: {', '.join(names)}")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


# ----------------------------------------------------------------------------------------------- overrides


def apply_override(tree: dict[str, Any], assignment: str, schema: type) -> None:
    """Apply ``a.b.c=value`` to the nested dict of a ``schema`` config (value parsed as YAML). Lists are indexed by
    position or by the ``name`` of an entry; a key the schema does not have is an error naming it."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {assignment!r} must look like key.path=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {key}: cannot parse value {raw!r}: {e}") from None
    parts = key.split(".")
    node: Any = tree
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            index = _list_index(node, part, where)
            if last:
                node[index] = value
                return
            node = node[index]
            schema = typing.get_args(schema)[0]
            continue
        if dataclasses.is_dataclass(schema):
            hints = typing.get_type_hints(schema)
            if part not in hints:
                raise ConfigError(f"unknown key {where}; {schema.__name__} has: {', '.join(hints)}")
            field_type = hints[part]
        else:  # a free mapping (model.flamingo): any key, validated later
            field_type = Any
        if last:
            node[part] = value
            return
        if part not in node or node[part] is None:
            default = _default_of(schema, part) if dataclasses.is_dataclass(schema) else {}
            node[part] = default
        node = node[part]
        schema = field_type


def _default_of(schema: type, name: str) -> Any:
    for f in dataclasses.fields(schema):
        if f.name == name:
            if f.default_factory is not dataclasses.MISSING:
                value = f.default_factory()
            else:
                value = f.default
            return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    raise ConfigError(f"unknown key {name}")


def _list_index(items: list, part: str, where: str) -> int:
    if part.lstrip("-").isdigit():
        index = int(part)
        if not -len(items) <= index < len(items):
            raise ConfigError(f"{where}: index {index} out of range (the list has {len(items)} entries)")
        return index
    for i, item in enumerate(items):
        if isinstance(item, dict) and item.get("name") == part:
            return i
    names = [str(it.get("name")) for it in items if isinstance(it, dict)]
    raise ConfigError(f"{where}: no entry named {part!r} (entries: {', '.join(names) or 'none'})")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML file; a missing file, invalid YAML or a non-mapping is a :class:`ConfigError`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {path} must hold a mapping of config sections")
    return tree


def dump_yaml(config: Any) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)
