"""Typed, validated hyperparameters declared as dataclass fields next to the class that uses them."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Iterable

from clrepro.errors import ConfigError

_RESERVED = ("name", "_target_")


def hp(default: Any = dataclasses.MISSING, *, doc: str = "", choices: Iterable | None = None,
       low: float | None = None, high: float | None = None, low_open: bool = False, symbol: str | None = None,
       bug: str | None = None) -> Any:
    """Declare one hyperparameter: default, doc, allowed choices or [low, high] range, paper symbol, bug id."""
    meta = {"doc": doc, "choices": tuple(choices) if choices is not None else None, "low": low, "high": high,
            "low_open": low_open, "symbol": symbol, "bug": bug}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a config value to the declared type, or raise ConfigError."""
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
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(key, f"expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, f"expected a list, got {value!r}")
        (arg, *_) = typing.get_args(tp) or (Any,)
        return [_coerce(v, arg, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a mapping, got {value!r}")
        kt, vt = typing.get_args(tp) or (Any, Any)
        return {k: _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key, extra_ok=())
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(key, f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(key, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
            raise ConfigError(key, f"expected a number, got {value!r}")
        if math.isnan(float(value)):
            raise ConfigError(key, "NaN is not allowed")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {value!r}")
        return value
    return value


def _check_range(value: Any, meta: dict, key: str) -> None:
    if value is None:
        return
    choices = meta.get("choices")
    items = value if isinstance(value, list) else [value]
    for v in items:
        if choices is not None and v not in choices:
            raise ConfigError(key, f"{v!r} is not allowed", choices)
        low, high = meta.get("low"), meta.get("high")
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            too_low = low is not None and (v <= low if meta.get("low_open") else v < low)
            if too_low or (high is not None and v > high):
                lo = f"({low}" if meta.get("low_open") else f"[{low}"
                raise ConfigError(key, f"{v!r} is out of range", f"{lo if low is not None else '(-inf'}, "
                                                                  f"{high if high is not None else 'inf'}]")


def build(schema: type, node: dict | None, prefix: str, extra_ok: Iterable[str] = _RESERVED) -> Any:
    """Validate a config mapping against a dataclass schema and return the typed instance."""
    if node is not None and not isinstance(node, dict):
        raise ConfigError(prefix, f"expected a mapping, got {node!r}")
    node = dict(node or {})
    fields = {f.name: f for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    for k in node:
        if k not in fields and k not in extra_ok:
            raise ConfigError(f"{prefix}.{k}", "unknown key", sorted(fields))
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}"
        if name not in node:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(key, "missing")
            continue
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = build(tp, node[name], key, extra_ok=())
            continue
        value = _coerce(node[name], tp, key)
        _check_range(value, f.metadata, key)
        kwargs[name] = value
    return schema(**kwargs)


def read_mapping(path, what: str) -> dict:
    """A YAML file's top-level mapping (a deep copy), or a one-line UserError naming the file."""
    import copy
    from pathlib import Path

    import yaml

    from clrepro.errors import UserError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {what} not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping at the top level")
    return copy.deepcopy(raw)


def describe(schema: type) -> list[dict]:
    """Rows (name, type, default, allowed, doc) describing a schema, for `clrepro list`."""
    rows = []
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        m = f.metadata
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "required")
        if m.get("choices"):
            allowed = "{" + ", ".join(map(str, m["choices"])) + "}"
        elif m.get("low") is not None or m.get("high") is not None:
            allowed = f"[{m.get('low', '-inf')}, {m.get('high') if m.get('high') is not None else 'inf'}]"
        else:
            allowed = ""
        doc = m.get("doc", "")
        if m.get("bug"):
            doc = f"{doc} ({m['bug']})"
        rows.append({"name": f.name, "type": _type_name(hints[f.name]), "default": default,
                     "allowed": allowed, "doc": doc})
    return rows
