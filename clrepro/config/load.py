"""Compose an experiment with Hydra's compose API and validate it into typed, registry-resolved parts."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clrepro.config.hparams import build
from clrepro.config.schema import ExperimentConfig
from clrepro.errors import ConfigError, UserError
from clrepro.registry import ALGORITHMS, BACKBONES, BENCHMARKS


def config_dir() -> Path:
    """The Hydra config tree: $CLREPRO_CONFIG_DIR, else the repository's `configs/`."""
    env = os.environ.get("CLREPRO_CONFIG_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "configs"


def experiment_names() -> list[str]:
    """Experiment config names, sub-folders included (`fgadahat_paper/icu_pmnist20`)."""
    root = config_dir() / "experiment"
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def _hydra_error(e: Exception, source: str) -> ConfigError:
    """Turn a Hydra composition error into one line naming the key and the allowed values."""
    msg = str(e)
    m = re.search(r"Could not find '([^']+)/([^']+)'", msg)
    if m:
        group, option = m.groups()
        options = re.findall(r"^\t(\S+)$", msg, flags=re.M)
        return ConfigError(group, f"unknown option '{option}'", options or None, source)
    m = re.search(r"Could not override '([^']+)'", msg)
    if m:
        key = m.group(1)
        return ConfigError(key, "unknown key (prefix with + to add one)", None, source)
    first = msg.strip().splitlines()[0] if msg.strip() else type(e).__name__
    return ConfigError("config", first, None, source)


def compose(experiment: str, overrides: list[str] = ()) -> tuple[dict, str]:
    """Compose `experiment` (a name under configs/experiment/ or a YAML path) with dotted overrides."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    cdir = config_dir()
    extra_dir = None
    path = Path(experiment)
    if experiment not in experiment_names() and (path.suffix in (".yaml", ".yml") or os.sep in experiment):
        if not path.is_file():
            raise UserError(f"{experiment}: experiment file not found")
        extra_dir = Path(tempfile.mkdtemp(prefix="clrepro-exp-"))
        (extra_dir / "experiment").mkdir()
        shutil.copy(path, extra_dir / "experiment" / path.name.replace(path.suffix, ".yaml"))
        name, source = path.stem, str(path)
    else:
        if experiment not in experiment_names():
            raise ConfigError("experiment", f"unknown experiment '{experiment}'", experiment_names(),
                              _relative(cdir / "experiment") + "/")
        name, source = experiment, _relative(cdir / "experiment" / f"{experiment}.yaml")
    hydra_overrides = [f"+experiment={name}", *overrides]
    if extra_dir is not None:
        hydra_overrides.insert(0, f"hydra.searchpath=[file://{extra_dir}]")
    try:
        with initialize_config_dir(config_dir=str(cdir), version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=hydra_overrides)
        raw = OmegaConf.to_container(cfg, resolve=True)
    except (HydraException, OmegaConfBaseException) as e:
        raise _hydra_error(e, source) from None
    finally:
        if extra_dir is not None:
            shutil.rmtree(extra_dir, ignore_errors=True)
    raw.setdefault("name", name)
    if raw.get("name") == "experiment":
        raw["name"] = name
    return raw, source


def _relative(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(p)


@dataclass
class Components:
    """The registered classes an experiment names, with their validated hyperparameters."""

    benchmark_cls: type
    benchmark_cfg: Any
    backbone_cls: type
    backbone_cfg: Any
    algorithm_cls: type
    algorithm_cfg: Any


def components(cfg: ExperimentConfig) -> Components:
    """Resolve and validate benchmark, backbone and algorithm (registry only; `_target_` must be registered)."""
    bm = BENCHMARKS.resolve(cfg.benchmark, "benchmark")
    bb = BACKBONES.resolve(cfg.backbone, "backbone")
    al = ALGORITHMS.resolve(cfg.algorithm, "algorithm")
    comp = Components(bm, build(bm.Config, cfg.benchmark, "benchmark"), bb, build(bb.Config, cfg.backbone, "backbone"),
                      al, build(al.Config, cfg.algorithm, "algorithm"))
    if al.requires_masked_backbone and not bb.masked:
        masked = [n for n in BACKBONES.names() if BACKBONES.get(n).masked]
        raise ConfigError("backbone.name", f"'{bb.registry_name}' has no HAT masks, which algorithm "
                          f"'{al.registry_name}' needs", masked)
    if cfg.scenario not in al.scenarios:
        raise ConfigError("scenario", f"'{cfg.scenario}' is not supported by algorithm '{al.registry_name}'",
                          al.scenarios)
    al.check_config(comp.algorithm_cfg, bb)
    if cfg.unlearning.requests:
        from clrepro.engine.unlearning import UnlearningPlan
        if not al.can_unlearn():
            able = [n for n in ALGORITHMS.names() if ALGORITHMS.get(n).can_unlearn()]
            raise ConfigError("algorithm.name", f"'{al.registry_name}' cannot unlearn, which unlearning.requests "
                              "asks for", able)
        UnlearningPlan.from_config(cfg.unlearning, comp.benchmark_cfg.num_tasks)
    return comp


def validate(raw: dict, source: str | None = None) -> ExperimentConfig:
    """Typed ExperimentConfig from a composed mapping; every component resolved and checked."""
    try:
        cfg = build(ExperimentConfig, raw, "config", extra_ok=("hydra",))
        # re-key top-level errors without the synthetic prefix
        components(cfg)
    except ConfigError as e:
        raise e.located(source, strip="config.") from None
    return cfg


def load_experiment(experiment: str, overrides: list[str] = ()) -> ExperimentConfig:
    """Compose and validate an experiment in one step."""
    raw, source = compose(experiment, list(overrides))
    return validate(raw, source)


def resolved_dict(cfg: ExperimentConfig) -> dict:
    """The fully resolved config as plain data (component defaults filled in), for config.yaml and hashing."""
    comp = components(cfg)
    out = dataclasses.asdict(cfg)
    for section, cls, ccfg in (("benchmark", comp.benchmark_cls, comp.benchmark_cfg),
                               ("backbone", comp.backbone_cls, comp.backbone_cfg),
                               ("algorithm", comp.algorithm_cls, comp.algorithm_cfg)):
        out[section] = {"name": cls.registry_name, **dataclasses.asdict(ccfg)}
    return out


def config_hash(resolved: dict) -> str:
    """sha256 (12 hex) of the canonical JSON of a resolved config, seed excluded (same config, other seed)."""
    data = {k: v for k, v in resolved.items() if k != "seed"}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


def from_resolved(resolved: dict) -> ExperimentConfig:
    """Rebuild a typed config from `resolved_dict` output (reference runs, sweep trials)."""
    return validate(json.loads(json.dumps(resolved)))
