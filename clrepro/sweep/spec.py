"""The sweep file (`sweeps/*.yaml`): schema, validation with one-line errors, and the search space."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clrepro.config.hparams import build, hp, read_mapping
from clrepro.config.schema import CL_METRICS, METRICS
from clrepro.errors import ConfigError


@dataclass
class Dimension:
    """One search-space entry, Optuna-style."""

    type: str = hp(choices=("float", "int", "categorical"))
    low: float | None = hp(None)
    high: float | None = hp(None)
    log: bool = hp(False, doc="log-uniform (float and int)")
    step: float | None = hp(None, low=0.0, low_open=True, doc="discretisation step (int and uniform float)")
    choices: list[Any] | None = hp(None, doc="values of a categorical dimension")


@dataclass
class ExperimentRef:
    name: str = hp(doc="config name under configs/experiment/ or a YAML path")
    overrides: list[str] = hp([], doc="dotted overrides applied to the experiment")


@dataclass
class Objective:
    metric: str = hp("AA", choices=METRICS, doc="metric after the last task, averaged over the tune seeds")
    mode: str = hp("max", choices=("max", "min"))


@dataclass
class Seeds:
    tune: list[int] = hp([1, 2, 3], low=0, doc="seeds every trial runs; their mean is the objective")
    report: list[int] = hp([11, 12, 13], low=0, doc="disjoint seeds the best configuration is re-run on")


@dataclass
class Resources:
    cpu: float = hp(1.0, low=0.0, low_open=True, doc="CPUs per trial (torch threads follow it)")
    gpu: float = hp(0.0, low=0.0, doc="GPUs per trial; fractions pack trials (0.25 → 4 per GPU)")


@dataclass
class Scheduler:
    name: str = hp("none", choices=("none", "asha"), doc="ASHA's time axis is tasks completed")
    grace_period: int = hp(2, low=1, doc="ASHA: tasks before the first cut")
    reduction_factor: float = hp(2.0, low=1.0, low_open=True)


@dataclass
class Sampler:
    name: str = hp("tpe", choices=("tpe", "random", "grid"), doc="Optuna sampler (grid: categoricals only)")
    seed: int = hp(0, low=0, doc="sampler seed (reproducible searches)")
    n_startup_trials: int = hp(5, low=0, doc="TPE: random trials before modelling")


@dataclass
class Storage:
    tracking_uri: str = hp("sqlite:///mlflow.db", doc="MLflow tracking URI (a server for multi-node sweeps)")
    tune_path: str = hp("ray_results", doc="Ray Tune storage path (shared storage on a cluster)")


@dataclass
class Final:
    top_k: int = hp(1, low=0, doc="best configurations re-run on the report seeds (0: none)")


@dataclass
class SweepSpec:
    name: str = hp(doc="sweep name: the MLflow experiment and the Tune run")
    experiment: ExperimentRef = field(default_factory=lambda: ExperimentRef("hat_pmnist"))
    search_space: dict[str, Dimension] = field(default_factory=dict)
    objective: Objective = field(default_factory=Objective)
    seeds: Seeds = field(default_factory=Seeds)
    metrics: list[str] = hp(list(CL_METRICS), choices=METRICS, doc="metrics each seed run computes")
    num_samples: int = hp(12, low=1, doc="trials (grid: ignored, one trial per grid point)")
    max_concurrent_trials: int = hp(2, low=1)
    resources: Resources = field(default_factory=Resources)
    scheduler: Scheduler = field(default_factory=Scheduler)
    sampler: Sampler = field(default_factory=Sampler)
    storage: Storage = field(default_factory=Storage)
    final: Final = field(default_factory=Final)
    description: str = hp("", doc="free text")
    variant: str | None = hp(None, doc="which entry of the file's `variants` this is (set when expanded)")


VARIANT_KEYS = ("overrides", "search_space", "objective", "seeds", "num_samples", "metrics", "description")


def expand_variants(raw: dict, path: Path) -> dict[str | None, dict]:
    """A sweep file's `variants:` as separate raw sweeps {variant: raw}, or {None: raw} without variants.

    A variant is one study of a family (EWC, online EWC, SI in one file): its sweep is named
    '<name>-<variant>', its `overrides` extend the experiment's, its `search_space` extends the common one and
    its other keys replace the file's.
    """
    variants = raw.pop("variants", None)
    if variants is None:
        return {None: raw}
    if not isinstance(variants, dict) or not variants:
        raise ConfigError("variants", "expected a non-empty mapping {name: {overrides, search_space, ...}}",
                          None, str(path))
    out = {}
    for name, v in variants.items():
        v = dict(v or {})
        bad = [k for k in v if k not in VARIANT_KEYS]
        if bad:
            raise ConfigError(f"variants.{name}.{bad[0]}", "unknown key", VARIANT_KEYS, str(path))
        r = copy.deepcopy(raw)
        r["name"] = f"{raw.get('name')}-{name}"
        r["variant"] = str(name)
        exp = dict(r.get("experiment") or {})
        exp["overrides"] = [*exp.get("overrides", []), *v.pop("overrides", [])]
        r["experiment"] = exp
        r["search_space"] = {**(r.get("search_space") or {}), **v.pop("search_space", {})}
        r.update(v)
        out[str(name)] = r
    return out


def _check_dimension(key: str, d: Dimension) -> None:
    k = f"search_space.{key}"
    if d.type == "categorical":
        if not d.choices:
            raise ConfigError(f"{k}.choices", "a categorical dimension needs a non-empty list", None)
        return
    if d.low is None or d.high is None:
        raise ConfigError(f"{k}.low/high", f"a {d.type} dimension needs both bounds")
    if d.low >= d.high:
        raise ConfigError(f"{k}.low", f"{d.low} is not below high={d.high}")
    if d.log and d.low <= 0:
        raise ConfigError(f"{k}.low", f"{d.low} must be > 0 for a log dimension")
    if d.log and d.step is not None:
        raise ConfigError(f"{k}.step", "cannot be combined with log")


def load_sweeps(path: str | Path) -> list[SweepSpec]:
    """Every sweep a file defines: itself, or one per entry of its `variants`."""
    path = Path(path)
    raw = read_mapping(path, "sweep file")
    return [_build(r, path) for r in expand_variants(raw, path).values()]


def load_sweep(path: str | Path, variant: str | None = None) -> SweepSpec:
    """Read and validate a sweep file (one `variant` of it, if it has variants); every problem is one line
    naming the file, key and allowed values."""
    path = Path(path)
    raw = read_mapping(path, "sweep file")
    expanded = expand_variants(raw, path)
    if variant not in expanded:
        names = [k for k in expanded if k is not None]
        problem = "the file has variants: choose one" if variant is None else f"no variant '{variant}'"
        raise ConfigError("variant", problem, names or ["(none: the file has no variants)"], str(path))
    return _build(expanded[variant], path)


def _build(raw: dict, path: Path) -> SweepSpec:
    if isinstance(raw.get("experiment"), str):
        raw["experiment"] = {"name": raw["experiment"]}
    try:
        spec = build(SweepSpec, raw, "sweep", extra_ok=())
        if not spec.search_space:
            raise ConfigError("search_space", "is empty; name at least one dotted config key")
        for key, dim in spec.search_space.items():
            _check_dimension(key, dim)
        if spec.objective.metric not in spec.metrics:
            raise ConfigError("objective.metric", f"'{spec.objective.metric}' is not computed", spec.metrics)
        if set(spec.seeds.tune) & set(spec.seeds.report):
            raise ConfigError("seeds.report", "must be disjoint from seeds.tune",
                              f"not {sorted(set(spec.seeds.tune) & set(spec.seeds.report))}")
        if spec.scheduler.name == "asha" and spec.objective.metric not in ("AA", "BWT"):
            raise ConfigError("scheduler.name", f"asha needs an objective known after each task, not "
                              f"{spec.objective.metric}", ["AA", "BWT"])
        if spec.sampler.name == "grid" and any(d.type != "categorical" for d in spec.search_space.values()):
            raise ConfigError("sampler.name", "grid needs categorical dimensions only", ["tpe", "random"])
    except ConfigError as e:
        raise e.located(str(path), strip="sweep.") from None
    return spec


def grid_size(spec: SweepSpec) -> int:
    n = 1
    for d in spec.search_space.values():
        n *= len(d.choices)
    return n


def optuna_space(spec: SweepSpec) -> dict:
    """The search space as Optuna distributions (OptunaSearch's `space`)."""
    from optuna import distributions as od

    space = {}
    for key, d in spec.search_space.items():
        if d.type == "categorical":
            space[key] = od.CategoricalDistribution(d.choices)
        elif d.type == "int":
            space[key] = od.IntDistribution(int(d.low), int(d.high), log=d.log, step=int(d.step or 1))
        else:
            space[key] = od.FloatDistribution(d.low, d.high, log=d.log, step=d.step)
    return space


def set_dotted(cfg: dict, key: str, value: Any) -> None:
    """cfg['a']['b'] = value for key 'a.b'; the path must exist (a typo is an error, not a new key)."""
    node = cfg
    parts = key.split(".")
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            raise ConfigError(key, f"no config section '{p}'")
        node = node[p]
    if parts[-1] not in node:
        raise ConfigError(key, "unknown key", sorted(node))
    node[parts[-1]] = value


def apply_params(base: dict, params: dict[str, Any]) -> dict:
    """A copy of the resolved config with the sampled hyperparameters set."""
    cfg = copy.deepcopy(base)
    for k, v in params.items():
        set_dotted(cfg, k, v)
    return cfg
