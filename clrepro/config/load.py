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
    if env:
        from clrepro.environment import folder

        return folder("CLREPRO_CONFIG_DIR", env)  # absolute: Hydra's initialize_config_dir needs that
    return Path(__file__).resolve().parents[2] / "configs"


def _checked_config_dir() -> Path:
    cdir = config_dir()
    if not (cdir / "config.yaml").is_file():
        where = "CLREPRO_CONFIG_DIR=" if os.environ.get("CLREPRO_CONFIG_DIR") else ""
        raise UserError(f"{where}{cdir}: not a clrepro config folder (no config.yaml in it)")
    return cdir


def experiment_names() -> list[str]:
    """Experiment config names, sub-folders included (`fgadahat_paper/icu_pmnist20`)."""
    root = config_dir() / "experiment"
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml") if p.is_file())


def check_config_files(cdir: Path, parse_all: bool = False) -> None:
    """Every YAML file of the config tree, read where one line can name it: a file with YAML anchors is parsed
    (an alias bomb in a group file is refused before Hydra expands it); with `parse_all`, every file is (to
    name the broken one, with its line, when a composition failed)."""
    from clrepro.files import parse_yaml, read_bytes, read_text

    for f in sorted(cdir.rglob("*.yaml")):
        if not f.is_file():
            raise UserError(f"{f}: config file is not a regular file")
        if parse_all or b"&" in read_bytes(f, "config file"):
            parse_yaml(read_text(f, "config file"), str(f))


USER_NAME = "__clrepro_user__"  # the name a user's file is composed under: never a shipped experiment's


def _hydra_error(e: Exception, source: str, temp: Path | None = None, user_file: str | None = None) -> ConfigError:
    """Turn a Hydra composition error into one line naming the key and the allowed values."""
    msg = str(e)
    override = getattr(e, "override", None)
    if isinstance(override, str):  # Hydra's OverrideParseException
        first = (msg.strip().splitlines() or ["syntax error"])[0]
        return ConfigError("overrides", f"cannot parse {override[:80]!r} ({first[:120]})",
                           "key=value, e.g. seed=3, optimizer.betas=[0.9,0.99], +algorithm.new_key=1", source)
    if temp is not None and user_file is not None:  # name the user's file, never the temporary copy
        msg = msg.replace(str(temp / "experiment" / f"{USER_NAME}.yaml"), user_file)
        msg = msg.replace(f"file://{temp}", str(Path(user_file).parent)).replace(str(temp), str(Path(user_file).parent))
        msg = msg.replace(f"experiment/{USER_NAME}", user_file).replace(USER_NAME, Path(user_file).stem)
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
    return ConfigError("config", first[:300], None, source)


def _user_copy(path: Path, extra_dir: Path) -> str:
    """Check a user's experiment file (read, YAML, a mapping) and copy it where Hydra composes it from, under
    a group no shipped experiment uses (a file named like a shipped one must never run the shipped one)."""
    from clrepro.files import parse_yaml, read_text

    text = read_text(path, "experiment file")
    data = parse_yaml(text, str(path))
    if data is None:
        raise UserError(f"{path}: experiment file is empty (expected config keys, e.g. `seed: 3` or "
                        "`optimizer: {lr: 0.01}`)")
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"a single value ({str(data)[:40]!r})"
        raise UserError(f"{path}: an experiment file must be a mapping of config keys at the top level, not {kind}")
    if not re.search(r"^#\s*@package", text, flags=re.M):
        text = "# @package _global_\n" + text  # an experiment's keys are the config's top-level keys
    (extra_dir / "experiment").mkdir(parents=True)
    (extra_dir / "experiment" / f"{USER_NAME}.yaml").write_text(text)
    return USER_NAME


def _safe_stem(stem: str) -> str:
    """A run name from a file name: characters outside the allowed set become '_'."""
    name = re.sub(r"[^A-Za-z0-9_.+=@-]+", "_", stem).strip("._-")[:100]
    return name or "experiment"


def compose(experiment: str, overrides: list[str] = ()) -> tuple[dict, str]:
    """Compose `experiment` (a name under configs/experiment/ or a YAML path) with dotted overrides."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    cdir = _checked_config_dir()
    extra_dir = None
    path = Path(experiment)
    names = experiment_names()
    is_file = experiment not in names and (path.suffix in (".yaml", ".yml") or os.sep in experiment)
    bad = [o for o in overrides if not isinstance(o, str) or "\x00" in o]
    if bad:
        raise ConfigError("overrides", f"{bad[0]!r} is not a key=value override", None, experiment)
    try:
        if is_file:
            from clrepro.files import read_bytes

            read_bytes(path, "experiment file")  # missing, a folder, a name too long...: one line, nothing made
            extra_dir = Path(tempfile.mkdtemp(prefix="clrepro-exp-"))
            hydra_name = _user_copy(path, extra_dir)
            name, source = _safe_stem(path.stem), str(path)
        else:
            if experiment not in names:
                raise ConfigError("experiment", f"unknown experiment '{experiment}'", names,
                                  _relative(cdir / "experiment") + "/")
            hydra_name, source = experiment, _relative(cdir / "experiment" / f"{experiment}.yaml")
            name = experiment
            from clrepro.files import read_yaml

            read_yaml(cdir / "experiment" / f"{experiment}.yaml", "experiment file", empty_ok=True)  # one line
        hydra_overrides = [f"+experiment={hydra_name}", *overrides]
        if extra_dir is not None:
            hydra_overrides.insert(0, f"hydra.searchpath=[file://{extra_dir}]")
        try:
            check_config_files(cdir)
            with initialize_config_dir(config_dir=str(cdir), version_base="1.3"):
                cfg = hydra_compose(config_name="config", overrides=hydra_overrides)
            raw = OmegaConf.to_container(cfg, resolve=True)
        except UserError:
            raise
        except Exception as e:  # Hydra, OmegaConf, YAML and I/O errors of the composition: one line
            check_config_files(cdir, parse_all=True)  # a broken file of the tree: named, with its line
            raise _hydra_error(e, source, extra_dir, str(path) if extra_dir else None) from None
    finally:
        if extra_dir is not None:
            shutil.rmtree(extra_dir, ignore_errors=True)
    if not isinstance(raw, dict):
        raise ConfigError("config", "the composed config is not a mapping", None, source)
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
    if hasattr(bm, "check_config"):
        bm.check_config(comp.benchmark_cfg)
    al.check_config(comp.algorithm_cfg, bb)
    al.check_trainer(comp.algorithm_cfg, cfg.trainer)
    from clrepro.engine.unlearning import UnlearningPlan

    UnlearningPlan.from_config(cfg.unlearning, comp.benchmark_cfg.num_tasks)  # requests and ages, always
    if cfg.unlearning.requests:
        if not al.can_unlearn():
            able = [n for n in ALGORITHMS.names() if ALGORITHMS.get(n).can_unlearn()]
            raise ConfigError("algorithm.name", f"'{al.registry_name}' cannot unlearn, which unlearning.requests "
                              "asks for", able)
    return comp


def _check_references(cfg: ExperimentConfig, num_tasks: int) -> None:
    """Each `references.<kind>` path is read now, and its task count checked, before any training step."""
    from clrepro.metrics.io import read_acc_matrix, read_joint_row

    for kind in ("independent", "joint", "random"):
        setting = getattr(cfg.references, kind)
        if setting in ("auto", "off"):
            continue
        key = f"references.{kind}"
        try:
            mat = read_joint_row(setting) if kind == "joint" else read_acc_matrix(setting)
        except UserError as e:
            raise ConfigError(key, str(e), "auto, off, or a path to an acc.csv") from None
        if mat.shape[-1] != num_tasks:
            raise ConfigError(key, f"{setting} has {mat.shape[-1]} tasks, the benchmark has {num_tasks}",
                              f"an acc.csv of {num_tasks} tasks")


def validate(raw: dict, source: str | None = None) -> ExperimentConfig:
    """Typed ExperimentConfig from a composed mapping; every component resolved and checked, cross-field
    checks and the reference files included (everything that can be checked before training)."""
    try:
        if not isinstance(raw, dict):
            raise ConfigError("config", f"expected a mapping, got {type(raw).__name__}")
        cfg = build(ExperimentConfig, raw, "config", extra_ok=("hydra",))
        # re-key top-level errors without the synthetic prefix
        comp = components(cfg)
        _check_references(cfg, comp.benchmark_cfg.num_tasks)
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
