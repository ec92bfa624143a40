"""A sweep planned before Ray starts: every input checked (the file, its experiment and search space, the
tracking URI, the storage path, the state to resume, a local instance's resources), nothing written."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from clrepro.config.load import from_resolved, load_experiment, resolved_dict
from clrepro.errors import ConfigError, UserError
from clrepro.sweep.space import check_dimension_type, leaf_problem
from clrepro.sweep.spec import SweepSpec, apply_params, load_sweep
from clrepro.tracking.mlflow_store import checked_tracking_uri


def _probes(dim) -> list:
    """The values of a dimension the config is checked with: every categorical choice, both bounds."""
    if dim.type == "categorical":
        return list(dim.choices)
    if dim.type == "int":
        return [int(dim.low), int(dim.high)]
    return [float(dim.low), float(dim.high)]


def base_config(spec: SweepSpec, source: str) -> dict:
    """The experiment's resolved config; every search-space value Optuna may sample is checked up front
    (each categorical choice, the bounds of a range) against the experiment's schema."""
    try:
        typed = load_experiment(spec.experiment.name, spec.experiment.overrides)
        cfg = resolved_dict(typed)
    except ConfigError as e:
        where = f" (in {e.source})" if e.source and e.source != spec.experiment.name else ""
        key = "experiment.name" if e.key == "experiment" else f"experiment: {e.key}"
        raise ConfigError(key, f"{e.problem}{where}", e.allowed, source) from None
    except UserError as e:
        raise ConfigError("experiment.name", str(e), None, source) from None
    for key, dim in spec.search_space.items():
        problem = leaf_problem(cfg, key)
        if problem:
            raise ConfigError(f"search_space.{key}", *problem, source)
        check_dimension_type(typed, key, dim, source)
        for probe in _probes(dim):
            try:
                from_resolved(apply_params(cfg, {key: probe}))
            except ConfigError as e:
                problem = e.problem if e.key == key else f"{e.key}: {e.problem}"
                if dim.type == "categorical" and len(dim.choices) > 1:
                    problem = f"choice {probe!r}: {problem}"
                raise ConfigError(f"search_space.{key}", problem, e.allowed, source) from None
    return cfg


def _sweep_dir(spec: SweepSpec, root: Path, resume: str | bool | None) -> tuple[Path, bool]:
    if resume is None or resume is False:
        return root / f"{spec.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}", False
    if resume is True:
        found = sorted((p for p in root.glob(f"{spec.name}-*") if (p / "tuner.pkl").exists()),
                       key=lambda p: p.stat().st_mtime)
        if not found:
            raise UserError(f"--resume: no interrupted sweep '{spec.name}-*' under {root}")
        path, flag = found[-1], f"--resume (latest: {found[-1]})"
    else:
        if not str(resume).strip() or "\x00" in str(resume):
            raise UserError(f"--resume {resume!r}: is empty (allowed: --resume alone for the latest sweep of this "
                            "name, or --resume SWEEP_DIR)")
        try:
            path = Path(resume).resolve()
            found = (path / "tuner.pkl").exists()
        except (OSError, RuntimeError) as e:
            raise UserError(f"--resume {str(resume)[:80]}: not a readable folder ({e})") from None
        if not found:
            raise UserError(f"--resume {resume}: not a Tune sweep folder (no tuner.pkl)")
        flag = f"--resume {resume}"
    problem = _tune_state_problem(path / "tuner.pkl")
    if problem:
        raise UserError(f"{flag}: {problem}; it cannot be resumed (allowed: the folder of an interrupted "
                        "`clrepro sweep`)")
    return path, True


def _tune_state_problem(pkl: Path) -> str | None:
    """Why Tune could not restore this tuner.pkl: not a regular readable file, or not a whole pickle stream
    (parsed with pickletools, nothing in it is run or imported)."""
    import pickletools

    try:
        if not pkl.is_file():
            return "tuner.pkl is not a regular file"
        data = pkl.read_bytes()
    except OSError as e:
        return f"tuner.pkl cannot be read ({e.strerror or e})"
    if not data.startswith(b"\x80"):  # Tune writes protocol 2 or later, which opens with PROTO
        return "tuner.pkl is not a saved Tune state (not a pickle)"
    try:
        for _ in pickletools.genops(data):
            pass
    except Exception as e:  # truncated or corrupted: pickletools names the position
        return f"tuner.pkl is damaged ({str(e)[:100]})"
    return None


def _local_resources(num_cpus: int | None) -> dict[str, float] | None:
    """What a local Ray instance will have (Ray's own detection), known before starting it; None if unknown."""
    try:
        from ray._private.accelerators import get_accelerator_manager_for_resource
        from ray._private.utils import get_num_cpus

        gpus = get_accelerator_manager_for_resource("GPU").get_current_node_num_accelerators()
        return {"CPU": float(num_cpus or get_num_cpus()), "GPU": float(gpus)}
    except Exception:  # a Ray without these helpers: the check after start-up decides
        return None


def check_resources_against(have: dict[str, float], largest: dict[str, float], spec: SweepSpec, source: str,
                             what: str) -> None:
    text = f"CPU {have.get('CPU', 0):g}, GPU {have.get('GPU', 0):g}"
    for key, need in (("cpu", spec.resources.cpu), ("gpu", spec.resources.gpu)):
        best = largest.get(key.upper(), 0)
        if need > 0 and need > best + 1e-9:
            where = f"{what} has {text}" + (f"; its largest node {best:g} {key.upper()}" if largest is not have else "")
            raise ConfigError(f"resources.{key}", f"{need:g} per trial, but {where}: no trial could start",
                              f"at most {best:g}", source)


@dataclass
class SweepPlan:
    """A sweep whose inputs are all checked: what `run_sweep` needs, known before Ray starts."""

    spec: SweepSpec
    spec_path: Path
    uri: str
    root: Path
    sweep_dir: Path
    resuming: bool
    base: dict
    address: str | None = None
    num_cpus: int | None = None


def _check_flags(address: str | None, tune_path: str | None) -> None:
    """An empty `--address` or `--storage` would silently mean the default: refused (--tracking-uri: its check)."""
    if address is not None and not address.strip():
        raise UserError("--address '': is empty (allowed: auto, HOST:PORT or ray://HOST:PORT; leave it out for a "
                        "local Ray instance)")
    if tune_path is not None and not str(tune_path).strip():
        raise UserError("--storage '': is empty (allowed: a folder path; leave it out for the sweep file's "
                        "storage.tune_path)")


def plan_sweep(spec_path: str | Path, address: str | None = None, tracking_uri: str | None = None,
               resume: str | bool | None = None, tune_path: str | None = None, num_cpus: int | None = None,
               variant: str | None = None) -> SweepPlan:
    """Check everything the inputs decide, writing nothing: the sweep file, the experiment and every
    search-space value, the tracking URI, the storage path, the state to resume, a local instance's resources."""
    from clrepro.files import check_output_dir

    _check_flags(address, tune_path)
    spec_path = Path(spec_path)
    spec = load_sweep(spec_path, variant)
    uri = checked_tracking_uri(tracking_uri if tracking_uri is not None else spec.storage.tracking_uri,
                               "--tracking-uri" if tracking_uri is not None else "storage.tracking_uri",
                               None if tracking_uri is not None else str(spec_path))
    try:
        root = check_output_dir(tune_path if tune_path is not None else spec.storage.tune_path,
                                "--storage" if tune_path is not None else f"{spec_path}: storage.tune_path",
                                must_be_new=False).resolve()
    except OSError as e:
        raise UserError(f"{spec_path}: storage.tune_path: {e}") from None
    sweep_dir, resuming = _sweep_dir(spec, root, resume)
    try:
        base = base_config(spec, str(spec_path))  # every problem in the sweep file is reported before Ray starts
    except ConfigError as e:  # name the variant whose experiment or search space it is
        if spec.variant is None:
            raise
        raise ConfigError(f"variants.{spec.variant}: {e.key}", e.problem, e.allowed, e.source) from None
    if not address and (local := _local_resources(num_cpus)) is not None:  # fail fast, before Ray starts
        check_resources_against(local, local, spec, str(spec_path), "the local Ray instance")
    return SweepPlan(spec, spec_path, uri, root, sweep_dir, resuming, base, address, num_cpus)
