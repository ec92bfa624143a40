"""Search-space keys checked against the experiment's declared hyperparameters: leaf keys, of matching types."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from clrepro.config.hparams import coerce, type_name
from clrepro.config.schema import ExperimentConfig
from clrepro.errors import ConfigError

SECTIONS = ("benchmark", "backbone", "algorithm")  # sections whose schema is the registered component's Config


def declared_type(cfg: ExperimentConfig, key: str) -> Any:
    """The type the experiment's schema declares for a dotted key; None where no schema declares it (a
    component's registry name, an unknown key: the probes name those)."""
    from clrepro.config.load import components

    parts = key.split(".")
    tp: Any = ExperimentConfig
    if parts[0] in SECTIONS:
        comp = components(cfg)
        tp = getattr(comp, f"{parts[0]}_cls").Config
        parts = parts[1:]
    for part in parts:
        if not dataclasses.is_dataclass(tp):
            return None
        tp = typing.get_type_hints(tp).get(part)
        if tp is None:
            return None
    return tp


def leaf_problem(resolved: dict, key: str) -> tuple[str, str] | None:
    """Why `key` does not name one hyperparameter of the resolved config (it names a group), or None."""
    node: Any = resolved
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None  # an unknown key: set_dotted names it with the keys there are
        node = node[part]
    if not isinstance(node, dict):
        return None
    leaves = [f"{key}.{k}" for k, v in node.items() if k != "name" and not isinstance(v, dict)][:3]
    return ("names a config group, not one hyperparameter (to compare groups, use `variants:`)",
            "a dotted leaf key" + (f", e.g. {', '.join(leaves)}" if leaves else ""))


def _mismatch(value: Any, tp: Any, key: str) -> str | None:
    """Why hparams' coercion would refuse `value` for `tp`, or change its kind (32.0 → 32, '1' → 1.0)."""
    try:
        coerced = coerce(value, tp, key)
    except ConfigError as e:
        return e.problem
    if type(coerced) is type(value) or (type(value) is int and type(coerced) is float):
        return None
    return f"{value!r} is a {type(value).__name__}, the key is declared {type_name(tp)}"


def check_dimension_type(cfg: ExperimentConfig, key: str, dim, source: str | None) -> None:
    """A dimension's values must have the key's declared type: an int hyperparameter is searched with type
    int (or categorical ints), a float one with float or int, a string or boolean one with categorical."""
    tp = declared_type(cfg, key)
    if tp is None or tp is Any:
        return
    k = f"search_space.{key}"
    if dim.type == "categorical":
        for c in dim.choices:
            problem = _mismatch(c, tp, key)
            if problem:
                raise ConfigError(f"{k}.choices", f"choice {c!r}: {problem}",
                                  f"values of type {type_name(tp)}", source)
        return
    sample = 0.5 if dim.type == "float" else 1  # any non-integral float Optuna may sample; any int
    if _mismatch(sample, tp, key):
        allowed = "type: int, or categorical integers" if _mismatch(1, tp, key) is None else \
            f"type: categorical with values of type {type_name(tp)}"
        raise ConfigError(f"{k}.type", f"{'an' if dim.type == 'int' else 'a'} {dim.type} dimension, but {key} is declared {type_name(tp)}",
                          allowed, source)
