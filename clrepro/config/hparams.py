"""Typed, validated hyperparameters declared as dataclass fields next to the class that uses them."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Callable, Iterable

from clrepro.errors import ConfigError
from clrepro.limits import FLOAT32_MAX, FLOAT32_TINY, INT64_MAX, INT64_MIN

_RESERVED = ("name", "_target_")


def hp(default: Any = dataclasses.MISSING, *, doc: str = "", choices: Iterable | None = None,
       low: float | None = None, high: float | None = None, low_open: bool = False, high_open: bool = False,
       length: int | None = None, min_len: int | None = None, max_len: int | None = None, unique: bool = False,
       check: Callable[[Any], str | None] | None = None, symbol: str | None = None, bug: str | None = None) -> Any:
    """Declare one hyperparameter: default, doc, allowed choices or [low, high] range, paper symbol, bug id.

    Ranges and choices apply to every element of a list; `length` / `min_len` / `max_len` / `unique` constrain
    the list itself; `check(value)` returns a problem (str) for what a library below would reject, or None.
    Numbers are always finite (NaN and ±inf are refused) and integers fit in 64 bits.
    """
    meta = {"doc": doc, "choices": tuple(choices) if choices is not None else None, "low": low, "high": high,
            "low_open": low_open, "high_open": high_open, "length": length, "min_len": min_len,
            "max_len": max_len, "unique": unique, "check": check, "symbol": symbol, "bug": bug}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def type_name(tp: Any) -> str:
    """A declared type as the error messages and `clrepro list` name it (`null` for None)."""
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a config value to the declared type, or raise ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        real = [a for a in args if a is not type(None)]
        for arg in real:
            try:
                return coerce(value, arg, key)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(key, f"expected {' or '.join(type_name(a) for a in args)}, got {_short(value)}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, f"expected a list, got {_short(value)}")
        (arg, *_) = typing.get_args(tp) or (Any,)
        return [coerce(v, arg, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a mapping, got {_short(value)}")
        kt, vt = typing.get_args(tp) or (Any, Any)
        return {k: coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp in (dict, list):  # a bare container type: the shape is still checked
        if not isinstance(value, tp):
            raise ConfigError(key, f"expected {'a mapping' if tp is dict else 'a list'}, got {_short(value)}")
        return value
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key, extra_ok=())
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(key, f"expected true or false, got {_short(value)}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and math.isfinite(value) and value.is_integer():
                value = int(value)
            else:
                raise ConfigError(key, f"expected an integer, got {_short(value)}")
        if not INT64_MIN <= value <= INT64_MAX:
            raise ConfigError(key, f"{_short(value)} does not fit in a 64-bit integer", f"[{INT64_MIN}, {INT64_MAX}]")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if isinstance(value, str):
                try:
                    value = float(value)
                except ValueError:
                    raise ConfigError(key, f"expected a number, got {_short(value)}") from None
            else:
                raise ConfigError(key, f"expected a number, got {_short(value)}")
        try:
            value = float(value)
        except OverflowError:
            raise ConfigError(key, f"{_short(value)} is too large for a float") from None
        if math.isnan(value):
            raise ConfigError(key, "NaN is not allowed (a finite number is)")
        if math.isinf(value):
            raise ConfigError(key, f"{value} is not allowed (a finite number is)")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {_short(value)}")
        return value
    return value


def _short(v: Any, n: int = 60) -> str:
    r = repr(v)
    return r if len(r) <= n else r[:n] + "..."


def _interval(meta: dict) -> str:
    low, high = meta.get("low"), meta.get("high")
    lo = "(-inf" if low is None else (f"({low}" if meta.get("low_open") else f"[{low}")
    hi = "inf)" if high is None else (f"{high})" if meta.get("high_open") else f"{high}]")
    return f"{lo}, {hi}"


def _check_range(value: Any, meta: dict, key: str) -> None:
    if value is None:
        return
    choices = meta.get("choices")
    if isinstance(value, list):
        n, length, lo_n, hi_n = len(value), meta.get("length"), meta.get("min_len"), meta.get("max_len")
        if length is not None and n != length:
            raise ConfigError(key, f"has {n} values, needs exactly {length}", f"a list of {length}")
        if lo_n is not None and n < lo_n:
            raise ConfigError(key, "is empty" if n == 0 else f"has {n} values, needs at least {lo_n}",
                              f"a list of at least {lo_n}")
        if hi_n is not None and n > hi_n:
            raise ConfigError(key, f"has {n} values, at most {hi_n} are allowed")
        if meta.get("unique"):
            seen = []
            for v in value:
                if v in seen:
                    raise ConfigError(key, f"repeats {v!r}", "distinct values")
                seen.append(v)
    if isinstance(value, dict):  # a typed mapping's values meet its range, each named; a raw section is built
        items = []               # on its own
        if any(meta.get(k) is not None for k in ("low", "high", "choices")):
            element = {k: meta.get(k) for k in ("choices", "low", "high", "low_open", "high_open")}
            for k, v in value.items():
                _check_range(v, element, f"{key}.{k}")
    else:
        items = value if isinstance(value, list) else [value]
    for v in items:
        if choices is not None and v not in choices:
            raise ConfigError(key, f"{_short(v)} is not allowed", choices)
        low, high = meta.get("low"), meta.get("high")
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            too_low = low is not None and (v <= low if meta.get("low_open") else v < low)
            too_high = high is not None and (v >= high if meta.get("high_open") else v > high)
            if too_low or too_high:
                raise ConfigError(key, f"{_short(v)} is out of range", _interval(meta))
        if isinstance(v, float) and abs(v) > FLOAT32_MAX:  # float hyperparameters meet float32 (and bf16) tensors
            raise ConfigError(key, f"{_short(v)} is too large for a float32 tensor",
                              f"[-{FLOAT32_MAX:.4g}, {FLOAT32_MAX:.4g}]")
        if isinstance(v, float) and 0 < abs(v) < FLOAT32_TINY:  # float32 flushes it to 0 or a subnormal
            raise ConfigError(key, f"{_short(v)} is too small for a float32 tensor",
                              f"0 or a magnitude of at least {FLOAT32_TINY:.4g}")
    check = meta.get("check")
    if check is not None:
        problem = check(value)
        if problem:
            raise ConfigError(key, problem[0] if isinstance(problem, tuple) else problem,
                              problem[1] if isinstance(problem, tuple) else None)


def build(schema: type, node: dict | None, prefix: str, extra_ok: Iterable[str] = _RESERVED) -> Any:
    """Validate a config mapping against a dataclass schema and return the typed instance."""
    if node is not None and not isinstance(node, dict):
        raise ConfigError(prefix, f"expected a mapping, got {_short(node)}")
    node = dict(node or {})
    fields = {f.name: f for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    for k in node:
        if k not in fields and k not in extra_ok:
            raise ConfigError(f"{prefix}.{k}", "unknown key", sorted(fields))
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}"
        tp = hints[name]
        if name not in node:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(key, "missing")
            _check_default(schema, f, tp, key)
            continue
        if dataclasses.is_dataclass(tp):
            kwargs[name] = build(tp, node[name], key, extra_ok=())
            continue
        value = coerce(node[name], tp, key)
        _check_range(value, f.metadata, key)
        kwargs[name] = value
    return schema(**kwargs)


def _check_default(schema: type, f: dataclasses.Field, tp: Any, key: str) -> None:
    """A field's own default meets its declaration too (a plug-in's Config is checked before training)."""
    value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if dataclasses.is_dataclass(value) or dataclasses.is_dataclass(tp):
        return
    try:
        _check_range(coerce(value, tp, key), f.metadata, key)
    except ConfigError as e:
        raise ConfigError(key, f"the default of {schema.__qualname__}.{f.name}: {e.problem}", e.allowed) from None


def read_mapping(path, what: str) -> dict:
    """A YAML file's top-level mapping ({} when empty), or a one-line UserError naming the file."""
    from clrepro.files import read_yaml

    return read_yaml(path, what, empty_ok=True)


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
            allowed = _interval(m)
        else:
            allowed = ""
        doc = m.get("doc", "")
        if m.get("bug"):
            doc = f"{doc} ({m['bug']})"
        rows.append({"name": f.name, "type": type_name(hints[f.name]), "default": default,
                     "allowed": allowed, "doc": doc})
    return rows
