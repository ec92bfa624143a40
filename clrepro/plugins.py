"""User regularizers loaded explicitly (a .py path or a `clrepro.plugins` entry point), never from a config.

A plug-in is a Python file (or module) defining, at module level, the regularization benchmark's two functions
    estimate_importance(model, dataset, prev_params, device) -> {name: tensor}
    compute_regularization_loss(model, importance, prev_params) -> scalar tensor
and optionally `NAME = "..."` (the algorithm name; default the file stem) and a dataclass `Config` of
hyperparameters (default RegularizationConfig: reg_strength, gamma, epsilon). Loading it registers an algorithm
built on ParameterRegularization; select it with `algorithm.name=NAME` (new keys need `+algorithm.KEY=...`).

Sweeps carry plug-ins to their Ray workers, local or on other nodes: `ship(spec)` packs a loaded plug-in (a file's
exact source text, or an entry point's name) into the trial context, and `register_shipped` registers it in each
worker process before the trial builds its config (an entry point is resolved on the worker, so it must be installed
there).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from clrepro.errors import UserError

ENTRY_POINT_GROUP = "clrepro.plugins"
REQUIRED = ("estimate_importance", "compute_regularization_loss")
_LOADED: dict[str, type] = {}  # source (resolved path or entry point) → registered class
_TEXT: dict[str, bytes] = {}  # resolved path → the source it was loaded from (what a sweep ships to its workers)
_SHIPPED: dict[str, type] = {}  # digest of a shipped source → the class registered from it in this process


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def register_module(module: types.ModuleType, default_name: str, source: str) -> type:
    """Register the algorithm a plug-in module defines; UserError naming `source` if it is incomplete."""
    from clrepro.algorithms.regularization import ParameterRegularization, RegularizationConfig
    from clrepro.registry import ALGORITHMS

    missing = [f for f in REQUIRED if not callable(getattr(module, f, None))]
    if missing:
        raise UserError(f"{source}: a regularizer plug-in must define {' and '.join(REQUIRED)} "
                        f"(missing: {', '.join(missing)})")
    name = getattr(module, "NAME", default_name)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-]*", name):
        raise UserError(f"{source}: NAME must be an identifier-like string, got {name!r}")
    config = getattr(module, "Config", RegularizationConfig)
    if not (isinstance(config, type) and dataclasses.is_dataclass(config)):
        raise UserError(f"{source}: Config must be a dataclass")
    if name in ALGORITHMS.names():
        raise UserError(f"{source}: algorithm '{name}' is already registered (set NAME to another name)")
    doc = (module.__doc__ or "").strip()
    cls = type(f"Plugin_{name}", (ParameterRegularization,), {
        "__doc__": doc or f"regularizer plug-in {source}",
        "__module__": module.__name__,
        "Config": config,
        "summary": doc.splitlines()[0] if doc else f"regularizer plug-in {source}",
        "estimate_importance": module.estimate_importance,
        "compute_regularization_loss": module.compute_regularization_loss,
        "plugin_module": module,
    })
    return ALGORITHMS.register(name)(cls)


def _exec_source(mod_name: str, text: bytes, filename: str, spec: str) -> types.ModuleType:
    """Run a plug-in's source as module `mod_name` (in sys.modules: dataclasses and pickling look it up by name)."""
    module = types.ModuleType(mod_name)
    module.__file__ = filename
    sys.modules[mod_name] = module
    try:
        exec(compile(text, filename, "exec"), module.__dict__)  # noqa: S102 (the user's own plug-in, loaded on request)
    except Exception as e:  # the user's code: report it as one line
        del sys.modules[mod_name]
        raise UserError(f"{spec}: plugin failed to import ({_first_line(e)})") from None
    except SystemExit as e:  # sys.exit() in a plug-in's import must not end the command silently
        del sys.modules[mod_name]
        raise UserError(f"{spec}: plugin called sys.exit({e.code!r}) while being imported (a plug-in module may "
                        "only define its Config and functions)") from None
    return module


def load_plugin(spec: str | Path) -> type:
    """Load a regularizer plug-in from a .py file path, or `ep:NAME` for entry point NAME of `clrepro.plugins`.

    Loading the same source twice returns the class registered the first time.
    """
    spec = str(spec)
    if spec.startswith("ep:"):
        return load_entry_points([spec[3:]])[0]
    path = Path(spec).expanduser()
    if path.suffix != ".py" or not path.is_file():
        raise UserError(f"{spec}: plugin file not found (expected a .py file)")
    key = str(path.resolve())
    if key in _LOADED:
        return _LOADED[key]
    try:
        text = path.read_bytes()
    except OSError as e:
        raise UserError(f"{spec}: cannot read the plugin file ({e.strerror or e})") from None
    mod_name = f"clrepro_plugin_{re.sub(r'[^0-9A-Za-z_]', '_', path.stem)}_{len(_LOADED)}"
    module = _exec_source(mod_name, text, key, spec)
    try:
        cls = register_module(module, path.stem, spec)
    except UserError:
        del sys.modules[mod_name]
        raise
    cls.plugin_digest = hashlib.sha256(text).hexdigest()
    _LOADED[key], _TEXT[key] = cls, text
    return cls


@dataclass(frozen=True)
class ShippedPlugin:
    """A loaded plug-in as a sweep ships it to its workers: the spec given, the algorithm name it registers, and
    for a file its source text and digest (None for an entry point, which each worker resolves itself)."""

    spec: str
    name: str
    source: bytes | None = None
    filename: str = ""
    digest: str = ""


def ship(spec: str | Path) -> ShippedPlugin:
    """Load (if needed) and pack a plug-in for the workers of a sweep: exactly the source that was loaded here."""
    cls = load_plugin(spec)
    spec = str(spec)
    if spec.startswith("ep:"):
        return ShippedPlugin(spec, cls.registry_name)
    key = str(Path(spec).expanduser().resolve())
    return ShippedPlugin(spec, cls.registry_name, _TEXT[key], key, cls.plugin_digest)


def register_shipped(plugins: Iterable[ShippedPlugin]) -> list[type]:
    """In a sweep worker: register each shipped plug-in once per process (the driver's own registrations and those
    of an earlier trial on a reused actor are kept); one line if a different algorithm already has its name."""
    from clrepro.registry import ALGORITHMS

    out = []
    for p in plugins:
        if p.source is None:
            out += load_entry_points([p.spec[3:]])
            continue
        if p.digest not in _SHIPPED:
            if p.name in ALGORITHMS.names():
                existing = ALGORITHMS.get(p.name)
                if getattr(existing, "plugin_digest", None) != p.digest:
                    raise UserError(f"{p.spec}: algorithm '{p.name}' is already registered on this worker by "
                                    "other code (set NAME to another name)")
                _SHIPPED[p.digest] = existing
            else:
                stem = Path(p.filename).stem
                mod_name = f"clrepro_plugin_{re.sub(r'[^0-9A-Za-z_]', '_', stem)}_{p.digest[:12]}"
                module = _exec_source(mod_name, p.source, p.filename, p.spec)
                cls = register_module(module, stem, p.spec)
                cls.plugin_digest = p.digest
                _SHIPPED[p.digest] = cls
        out.append(_SHIPPED[p.digest])
    return out


def load_entry_points(names: list[str] | None = None) -> list[type]:
    """Load the `clrepro.plugins` entry points (all, or those named); each names a plug-in module."""
    from importlib.metadata import entry_points

    found = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    if names is not None:
        unknown = [n for n in names if n not in found]
        if unknown:
            raise UserError(f"ep:{unknown[0]}: no '{ENTRY_POINT_GROUP}' entry point of that name "
                            f"(installed: {', '.join(sorted(found)) or 'none'})")
    out = []
    for name in (names if names is not None else sorted(found)):
        key = f"ep:{name}"
        if key not in _LOADED:
            try:
                module = found[name].load()
            except Exception as e:
                raise UserError(f"{key}: plugin failed to import ({_first_line(e)})") from None
            except SystemExit as e:
                raise UserError(f"{key}: plugin called sys.exit({e.code!r}) while being imported") from None
            if not isinstance(module, types.ModuleType):
                raise UserError(f"{key}: the entry point must name a module, got {type(module).__name__}")
            _LOADED[key] = register_module(module, name, key)
        out.append(_LOADED[key])
    return out
