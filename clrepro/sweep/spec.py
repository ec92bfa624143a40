"""The sweep file (`sweeps/*.yaml`): schema, validation with one-line errors, and the search space."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clrepro.config.hparams import build, hp, read_mapping
from clrepro.config.schema import CL_METRICS, METRICS, name_problem
from clrepro.errors import ConfigError
from clrepro.limits import SEED_MAX


def sweep_name_problem(name: str):
    """A sweep name is one folder name (the Tune run) and an MLflow experiment name."""
    if "/" in name:
        return f"{name!r} contains '/' (it names one folder)", "letters, digits, _ . + = @ -"
    return name_problem(name)


def whole_if_above_one(v: float):
    """Ray accepts fractional resources only below 1 (0.25 GPU packs four trials; 1.5 GPUs is refused)."""
    if v > 1 and not float(v).is_integer():
        return f"{v} is neither a fraction below 1 nor a whole number", "e.g. 0.25, 0.5, 1, 2"
    return None


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
    tune: list[int] = hp([1, 2, 3], low=0, high=SEED_MAX, min_len=1, unique=True,
                         doc="seeds every trial runs; their mean is the objective")
    report: list[int] = hp([11, 12, 13], low=0, high=SEED_MAX, unique=True,
                           doc="disjoint seeds the best configuration is re-run on")


@dataclass
class Resources:
    cpu: float = hp(1.0, low=0.0, low_open=True, high=1024, check=whole_if_above_one,
                    doc="CPUs per trial (torch threads follow it)")
    gpu: float = hp(0.0, low=0.0, high=64, check=whole_if_above_one,
                    doc="GPUs per trial; fractions pack trials (0.25 → 4 per GPU)")


@dataclass
class Scheduler:
    name: str = hp("none", choices=("none", "asha"), doc="ASHA's time axis is tasks completed")
    grace_period: int = hp(2, low=1, high=10**6, doc="ASHA: tasks before the first cut")
    reduction_factor: float = hp(2.0, low=1.0, low_open=True, high=1000)


@dataclass
class Sampler:
    name: str = hp("tpe", choices=("tpe", "random", "grid"), doc="Optuna sampler (grid: categoricals only)")
    seed: int = hp(0, low=0, high=SEED_MAX, doc="sampler seed (reproducible searches)")
    n_startup_trials: int = hp(5, low=0, high=10**6, doc="TPE: random trials before modelling")


def not_empty(v: str):
    """An empty or blank value would silently mean the default: it is refused."""
    return ("is empty", "a value, or leave the key out for the default") if not v.strip() else None


@dataclass
class Storage:
    tracking_uri: str = hp("sqlite:///mlflow.db", check=not_empty,
                           doc="MLflow tracking URI (a server for multi-node sweeps)")
    tune_path: str = hp("ray_results", check=not_empty, doc="Ray Tune storage path (shared storage on a cluster)")


@dataclass
class Final:
    top_k: int = hp(1, low=0, high=1000, doc="best configurations re-run on the report seeds (0: none)")


@dataclass
class SweepSpec:
    name: str = hp(check=sweep_name_problem, doc="sweep name: the MLflow experiment and the Tune run")
    experiment: ExperimentRef = field(default_factory=lambda: ExperimentRef("hat_pmnist"))
    search_space: dict[str, Dimension] = field(default_factory=dict)
    objective: Objective = field(default_factory=Objective)
    seeds: Seeds = field(default_factory=Seeds)
    metrics: list[str] = hp(list(CL_METRICS), choices=METRICS, min_len=1, unique=True,
                            doc="metrics each seed run computes")
    num_samples: int = hp(12, low=1, high=100_000, doc="trials (grid: ignored, one trial per grid point)")
    max_concurrent_trials: int = hp(2, low=1, high=10_000)
    max_failures: int = hp(2, low=0, high=100, doc="retries of a trial whose worker was lost (a node or actor "
                                                    "failure, through Tune's FailureConfig); a trial's own error "
                                                    "(NaN loss, an exception) is never retried")
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
    if "variant" in raw:
        raise ConfigError("variant", "is set from `variants:` (the file's keys)", ["variants"], str(path))
    if isinstance(raw.get("experiment"), str):
        raw["experiment"] = {"name": raw["experiment"]}
    if variants is None:
        return {None: raw}
    if not isinstance(variants, dict) or not variants:
        raise ConfigError("variants", "expected a non-empty mapping {name: {overrides, search_space, ...}}",
                          None, str(path))
    exp = raw.get("experiment") or {}
    if not isinstance(exp, dict) or not isinstance(exp.get("overrides", []), list):
        raise ConfigError("experiment", "expected {name: ..., overrides: [...]}", None, str(path))
    if not isinstance(raw.get("search_space") or {}, dict):
        raise ConfigError("search_space", "expected a mapping {dotted.key: {type: ...}}", None, str(path))
    out = {}
    for name, v in variants.items():
        if not isinstance(name, str) or not name.strip():
            raise ConfigError("variants", f"variant name {name!r} is not a non-empty string (two names that read "
                              "the same, 1 and '1', would be one variant)", "names such as ewc or si; quote a "
                              "number: '1'", str(path))
        if v is not None and not isinstance(v, dict):
            raise ConfigError(f"variants.{name}", "expected a mapping", VARIANT_KEYS, str(path))
        v = dict(v or {})
        bad = [k for k in v if k not in VARIANT_KEYS]
        if bad:
            raise ConfigError(f"variants.{name}.{bad[0]}", "unknown key", VARIANT_KEYS, str(path))
        if not isinstance(v.get("overrides", []), list):
            raise ConfigError(f"variants.{name}.overrides", "expected a list of dotted overrides", None, str(path))
        if not isinstance(v.get("search_space", {}), dict):
            raise ConfigError(f"variants.{name}.search_space", "expected a mapping {dotted.key: {type: ...}}",
                              None, str(path))
        r = copy.deepcopy(raw)
        r["name"] = f"{raw.get('name')}-{name}"
        r["variant"] = name
        exp = dict(r.get("experiment") or {})
        exp["overrides"] = [*exp.get("overrides", []), *v.pop("overrides", [])]
        r["experiment"] = exp
        r["search_space"] = {**(r.get("search_space") or {}), **v.pop("search_space", {})}
        r.update(v)
        out[name] = r
    return out


NOT_SEARCHABLE = {"seed": "the trial runs seeds.tune", "metrics": "set the sweep's `metrics`",
                  "name": "the sweep names its runs"}


def _check_dimension(key: str, d: Dimension) -> None:
    """What Optuna's distributions accept, checked here so that a sweep never starts with a bad dimension."""
    k = f"search_space.{key}"
    if not isinstance(key, str) or key in NOT_SEARCHABLE or not key or any(not p for p in key.split(".")):
        why = NOT_SEARCHABLE.get(key, "not a dotted config key") if isinstance(key, str) else "not a string"
        raise ConfigError(k, f"cannot be searched ({why})", "dotted config keys such as optimizer.lr")
    if d.type == "categorical":
        if not d.choices:
            raise ConfigError(f"{k}.choices", "a categorical dimension needs a non-empty list", None)
        for c in d.choices:
            if c is not None and not isinstance(c, (bool, int, float, str)):
                raise ConfigError(f"{k}.choices", f"{c!r} is not a scalar (Optuna's categorical choices are "
                                  "numbers, strings, booleans or null)", None)
            if isinstance(c, float) and c != c or c in (float("inf"), float("-inf")):
                raise ConfigError(f"{k}.choices", f"{c!r} is not allowed (a finite number is)")
        if len(set(map(repr, d.choices))) != len(d.choices):
            raise ConfigError(f"{k}.choices", f"repeats a choice in {d.choices}", "distinct choices")
        extra = [n for n in ("low", "high", "step") if getattr(d, n) is not None] + (["log"] if d.log else [])
        if extra:
            raise ConfigError(f"{k}.{extra[0]}", "is not used by a categorical dimension", ["type", "choices"])
        return
    if d.choices is not None:
        raise ConfigError(f"{k}.choices", f"is not used by a {d.type} dimension (use type: categorical)",
                          ["type", "low", "high", "log", "step"])
    if d.low is None or d.high is None:
        raise ConfigError(f"{k}.low/high", f"a {d.type} dimension needs both bounds")
    if d.low >= d.high:
        raise ConfigError(f"{k}.low", f"{d.low} is not below high={d.high}")
    if d.log and d.low <= 0:
        raise ConfigError(f"{k}.low", f"{d.low} must be > 0 for a log dimension")
    if d.log and d.step is not None and not (d.type == "int" and d.step == 1):
        raise ConfigError(f"{k}.step", "cannot be combined with log")
    if d.type == "int":
        for n in ("low", "high", "step"):
            v = getattr(d, n)
            if v is not None and not float(v).is_integer():
                raise ConfigError(f"{k}.{n}", f"{v} is not an integer (an int dimension)")
    if d.step is not None:
        n = (d.high - d.low) / d.step
        if abs(n - round(n)) > 1e-9 * max(1.0, abs(n)):
            raise ConfigError(f"{k}.step", f"{d.step} does not divide high - low = {d.high - d.low}",
                              "a step that divides the range")


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
        if not isinstance(raw.get("search_space", {}), (dict, type(None))):
            raise ConfigError("search_space", "expected a mapping {dotted.key: {type: ...}}")
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
