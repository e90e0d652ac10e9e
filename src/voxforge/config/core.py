"""Typed configs from YAML with dotted `key=value` overrides.

Design:
- Every component owns a small `@dataclass` config. Fields carry their constraints in
  metadata through `option(...)`: `choices`, `ge/gt/le/lt`, and `help`.
- `from_dict(cls, data, source=...)` builds a config from plain data (what
  `yaml.safe_load` returns) and checks every key: unknown keys (with a "did you mean"),
  wrong types and out-of-range values raise `ConfigError` naming the full dotted key, the
  expected type or range, and the file the value came from.
- Cross-field checks live in a dataclass's `__post_init__`, raising
  `ConfigValueError(key, message)`; `from_dict` prefixes the key and adds the source.
- Overrides are parsed with `yaml.safe_load`, so `lr=3e-4`, `ema_rates=[0.999,0.9999]`
  and `time_limit=null` all work as a user would expect.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from voxforge.errors import ConfigError

__all__ = [
    "ConfigError",
    "ConfigValueError",
    "option",
    "from_dict",
    "to_dict",
    "load_yaml",
    "apply_overrides",
    "dump_yaml",
]


class ConfigValueError(ValueError):
    """Raised inside a config's `__post_init__`; `key` is relative to that config."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key
        self.message = message


def option(
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Any = dataclasses.MISSING,
    help: str = "",
    choices: Iterable[Any] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> Any:
    """A dataclass field with validation metadata."""
    metadata = {
        "help": help,
        "choices": tuple(choices) if choices else None,
        "ge": ge,
        "gt": gt,
        "le": le,
        "lt": lt,
    }
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return f"mapping of {_type_name(get_args(tp)[1])}"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _err(source: str, key: str, message: str) -> ConfigError:
    where = f"{source}: " if source else ""
    return ConfigError(f"{where}key '{key}': {message}")


def _convert(tp: Any, value: Any, key: str, source: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise _err(source, key, f"expected {_type_name(tp)}, got null")
        options = [arg for arg in args if arg is not type(None)]
        if len(options) == 1:  # X | None: X's own error names the key and what is wrong
            return _convert(options[0], value, key, source)
        for arg in options:
            try:
                return _convert(arg, value, key, source)
            except ConfigError:
                continue
        raise _err(source, key, f"expected {_type_name(tp)}, got {_describe(value)}")
    if origin is Literal:
        if any(value == arg and type(value) is type(arg) for arg in get_args(tp)):
            return value
        raise _err(source, key, f"expected {_type_name(tp)}, got {_describe(value)}")
    if dataclasses.is_dataclass(tp):
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise _err(source, key, f"expected a mapping of {tp.__name__} options, got {_describe(value)}")
        return from_dict(tp, value, source=source, prefix=key)
    if origin in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise _err(source, key, f"expected {_type_name(tp)}, got {_describe(value)}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise _err(source, key, f"expected a list of {len(args)} items, got {len(value)}")
            return tuple(_convert(a, v, f"{key}[{i}]", source) for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        items = [_convert(item, v, f"{key}[{i}]", source) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise _err(source, key, f"expected {_type_name(tp)}, got {_describe(value)}")
        vt = get_args(tp)[1] if get_args(tp) else Any
        return {str(k): _convert(vt, v, f"{key}.{k}", source) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _err(source, key, f"expected bool (true/false), got {_describe(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _err(source, key, f"expected int, got {_describe(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise _err(source, key, f"expected float, got {_describe(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise _err(source, key, f"expected str, got {_describe(value)}")
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise _err(source, key, f"expected a path string, got {_describe(value)}")
    raise _err(source, key, f"unsupported config type {tp!r}")


def _check_metadata(meta: Mapping[str, Any], value: Any, key: str, source: str) -> None:
    if value is None:
        return
    choices = meta.get("choices")
    if choices and value not in choices:
        raise _err(source, key, f"expected one of {', '.join(map(repr, choices))}, got {value!r}")
    bounds = [
        ("ge", ">=", lambda v, b: v >= b),
        ("gt", ">", lambda v, b: v > b),
        ("le", "<=", lambda v, b: v <= b),
        ("lt", "<", lambda v, b: v < b),
    ]
    values = value if isinstance(value, (list, tuple)) else [value]
    for name, sym, ok in bounds:
        bound = meta.get(name)
        if bound is None:
            continue
        for v in values:
            if isinstance(v, (int, float)) and not ok(v, bound):
                raise _err(source, key, f"expected a value {sym} {bound}, got {v!r}")


def from_dict(cls: type, data: Mapping[str, Any], *, source: str = "", prefix: str = "") -> Any:
    """Build dataclass `cls` from `data`, validating every key (see module docstring)."""
    if not isinstance(data, Mapping):
        raise _err(source, prefix or "<root>", f"expected a mapping, got {_describe(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            full = f"{prefix}.{key}" if prefix else str(key)
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise _err(source, full, f"unknown key{hint}; allowed keys here: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, f in fields.items():
        full = f"{prefix}.{name}" if prefix else name
        if name in data:
            value = _convert(hints[name], data[name], full, source)
        elif f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
            continue
        else:
            raise _err(source, full, f"required key is missing (expected {_type_name(hints[name])})")
        _check_metadata(f.metadata, value, full, source)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except ConfigValueError as err:
        full = f"{prefix}.{err.key}" if prefix else err.key
        raise _err(source, full, err.message) from None


def to_dict(obj: Any) -> Any:
    """Plain data (dicts, lists, scalars) for YAML/JSON output."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: recipe file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level of a recipe must be a mapping, got {type(data).__name__}")
    return data


_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of `data` with dotted `key=value` overrides applied (values are YAML)."""
    import copy

    out = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected KEY=VALUE, for example optim.lr=3e-4")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override '{item}': the key must be dotted names like train.max_steps")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"override '{item}': value is not valid YAML: {err}") from None
        if isinstance(value, str) and _NUMBER.match(value):
            value = float(value)  # YAML 1.1 reads 3e-4 as a string
        node = out
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override '{item}': '{'.'.join(parts[: i + 1])}' is not a section")
            node = child
        node[parts[-1]] = value
    return out


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False, default_flow_style=None)
