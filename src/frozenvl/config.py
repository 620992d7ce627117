"""The config engine: typed dataclasses from YAML mappings, dotted ``key=value`` overrides, errors naming the key.

Every configuration of frozenvl is a dataclass deriving from :class:`Config` and read by :func:`from_dict`: values
are coerced to the annotated types (``5e-4`` read by YAML as a string becomes a float, a list becomes a tuple),
nested dataclasses and lists of them are built recursively, and an unknown key or a value of the wrong type raises
:class:`ConfigError` naming the dotted key. Overrides (``optim.lr=3e-4``, ``data.datasets.pairs.weight=0.5``) are
parsed as YAML and checked against the same schema before anything is built.

Value checks live in one place per class, ``validate(self, where)``, which runs whenever a config is made: in code
(``where`` is then the class name: ``FlamingoConfig.placement must be one of ...``) or by :func:`from_dict`
(``where`` is the dotted key in its tree: ``model.flamingo.placement must be one of ...``).
"""

from __future__ import annotations

import collections.abc
import contextvars
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


# (class, dotted key) of the config that from_dict is constructing, read by Config.__post_init__ so that the checks
# run on construction name the key in the tree. Other configs made meanwhile (a field's default, a config built by
# validate()) are of another class or made after the reset below: they are checked under their own class name.
_building: contextvars.ContextVar[tuple[type, str] | None] = contextvars.ContextVar("frozenvl_config", default=None)


class Config:
    """Base of every frozenvl config dataclass: ``Cls.from_dict(mapping)``, ``config.to_dict()``, and
    :meth:`validate` run on construction, however the config is made."""

    def __post_init__(self) -> None:
        building = _building.get()
        where = building[1] if building is not None and building[0] is type(self) else ""
        token = _building.set(None)
        try:
            self.validate(where or type(self).__name__)
        finally:
            _building.reset(token)

    def validate(self, where: str) -> None:
        """Check the values; raise :class:`ConfigError` naming the key as ``f"{where}.{field}"``."""

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
        return from_dict(cls, data, where)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def to_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as plain YAML/JSON-able data, tuples as lists (the inverse of :func:`from_dict`)."""
    return _plain(dataclasses.asdict(config))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


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
        if isinstance(value, tp):  # already built (and checked): a preset's sub-config passed on as it is
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping of {tp.__name__} fields; got {value!r}")
        return from_dict(tp, value, where)
    if origin in (list, tuple, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list; got {value!r}")
        item = typing.get_args(tp)[0] if typing.get_args(tp) else Any  # list[X], tuple[X, ...], Sequence[X]
        items = [_coerce(item, v, f"{where}.{i}") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping; got {value!r}")
        item = typing.get_args(tp)[1] if typing.get_args(tp) else Any
        return {k: _coerce(item, v, f"{where}.{k}") for k, v in value.items()}
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
    recursively, an unknown key an error naming it (``where`` is the dotted path of ``data`` in its tree); the
    config's own checks (:meth:`Config.validate`) name their keys under ``where``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__} must be a mapping of {cls.__name__} fields; got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"unknown key {prefix}{unknown[0]}; {cls.__name__} has: {', '.join(names)}")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}" if where else k) for k, v in data.items()}
    token = _building.set((cls, where))
    try:
        return cls(**kwargs)
    finally:
        _building.reset(token)


# ----------------------------------------------------------------------------------------------- overrides


def apply_override(tree: dict[str, Any], assignment: str, schema: type) -> None:
    """Apply ``a.b.c=value`` to the nested dict of a ``schema`` config (value parsed as YAML). Lists are indexed by
    position or by the ``name`` of an entry; a key the schema does not have is an error naming it."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {assignment!r} must look like key.path=value")
    try:
        if _flow_depth(raw) > MAX_YAML_DEPTH:  # PyYAML would recurse for seconds before its RecursionError
            raise RecursionError
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {key}: cannot parse value {raw!r}: {e}") from None
    except RecursionError:
        raise ConfigError(f"override {key}: the value is nested too deeply to read") from None
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
        else:  # a free mapping (model.flame.vision: fields over a preset): any key, checked when built
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
            return to_dict(value) if dataclasses.is_dataclass(value) else value
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


MAX_YAML_DEPTH = 100  # flow-style nesting ([ and { outside quotes) a config file may have


def _flow_depth(text: str) -> int:
    """The deepest nesting of YAML flow collections (``[`` / ``{`` outside quoted strings) in ``text``."""
    depth = deepest = 0
    quote = ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth = max(0, depth - 1)
    return deepest


def load_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML file; a missing file, invalid YAML or a non-mapping is a :class:`ConfigError`."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    if not path.is_file():  # a folder, a FIFO (reading it would block), a device
        raise ConfigError(f"config file {path} is not a regular file")
    try:
        text = path.read_text(encoding="utf-8")
        if _flow_depth(text) > MAX_YAML_DEPTH:  # PyYAML would recurse for seconds before its RecursionError
            raise RecursionError
        tree = yaml.safe_load(text) or {}
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text (a binary file?): {e.reason} at byte {e.start}") \
            from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {' '.join(str(e).split())}") from None
    except RecursionError:
        raise ConfigError(f"config file {path} is nested too deeply to read") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {path} must hold a mapping of config sections")
    return tree


def dump_yaml(config: Any) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)
