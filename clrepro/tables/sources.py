"""Where a cell's seed values come from: MLflow seed runs (of a sweep group or an experiment) or run folders."""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

from clrepro.errors import UserError
from clrepro.tables.spec import METRIC_NAMES, Selector
from clrepro.tracking.mlflow_store import GROUP, LEVEL, PARENT, SEED, SWEEP, TAG, MlflowStore


@dataclass
class SeedValues:
    """One seed run's metrics (fractions; None where undefined) and where it came from."""

    seed: int | None
    metrics: dict[str, float | None]
    origin: str


class RunReader:
    """Reads seed runs for selectors; one MLflow client per tracking URI, opened on first use."""

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri
        self._stores: dict[str, MlflowStore] = {}

    def _store(self, experiment: str) -> MlflowStore | None:
        uri = self.tracking_uri
        if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
            return None  # no store yet: nothing logged (and reading must not create one)
        if experiment not in self._stores:
            store = MlflowStore(self.tracking_uri)
            exp = store.client.get_experiment_by_name(experiment)
            if exp is None:
                return None
            store.experiment_id = exp.experiment_id
            self._stores[experiment] = store
        return self._stores[experiment]

    def read(self, sel: Selector) -> list[SeedValues]:
        if sel.folders:
            return read_folders(sel.folders)
        if sel.sweep:
            return self._sweep(sel)
        return self._experiment(sel)

    def latest_sweep_run(self, sweep: str) -> str | None:
        """The newest finished sweep (parent run) of that name."""
        store = self._store(sweep)
        if store is None:
            return None
        parents = store.find_runs({LEVEL: "sweep", SWEEP: sweep}, statuses=["FINISHED"])
        return max(parents, key=lambda r: r.info.start_time).info.run_id if parents else None

    def _sweep(self, sel: Selector) -> list[SeedValues]:
        store = self._store(sel.sweep)
        parent = sel.sweep_run or self.latest_sweep_run(sel.sweep)
        if store is None or parent is None:
            return []
        trials = store.find_runs({LEVEL: "trial", SWEEP: sel.sweep, GROUP: sel.group, PARENT: parent},
                                 statuses=["FINISHED"])
        if sel.group == "final":  # the best configuration: rank 1
            trials = [t for t in trials if t.data.tags.get(TAG + "rank") == "1"]
        out = []
        for t in trials:
            for run in store.find_runs({LEVEL: "seed", GROUP: sel.group, PARENT: t.info.run_id}, statuses=["FINISHED"]):
                out.append(_from_run(run))
        return sorted(out, key=lambda v: (v.seed is None, v.seed))

    def _experiment(self, sel: Selector) -> list[SeedValues]:
        from clrepro.tables.produce import experiment_identity

        name, chash = experiment_identity(sel)
        store = self._store(table_experiment_name(name))
        if store is None:
            return []
        by_seed: dict[int, SeedValues] = {}
        runs = store.find_runs({LEVEL: "seed", TAG + "config_hash": chash}, statuses=["FINISHED"])
        for run in sorted(runs, key=lambda r: r.info.start_time):
            v = _from_run(run)
            if v.seed in sel.seeds:
                by_seed[v.seed] = v  # the newest run of a seed wins
        return [by_seed[s] for s in sorted(by_seed)]


def table_experiment_name(experiment: str) -> str:
    """The MLflow experiment holding the seed runs `clrepro table --run` produces for a config."""
    return f"table/{experiment}"


def _from_run(run) -> SeedValues:
    m = run.data.metrics
    seed = run.data.tags.get(SEED)
    return SeedValues(int(seed) if seed is not None else None, {k: m.get(k) for k in METRIC_NAMES},
                      f"mlflow:{run.info.run_id}")


def read_folders(pattern: str) -> list[SeedValues]:
    """`clrepro run` folders: metrics.json and manifest.json (seed)."""
    out = []
    for folder in sorted(glob.glob(pattern)):
        p = Path(folder)
        if not (p / "metrics.json").is_file():
            continue
        metrics = _json_mapping(p / "metrics.json")
        manifest = _json_mapping(p / "manifest.json") if (p / "manifest.json").is_file() else {}
        if manifest.get("status", "FINISHED") != "FINISHED":
            continue  # a failed or interrupted run's partial outputs never fill a cell
        seed = manifest.get("seed")
        values = {}
        for k in METRIC_NAMES:
            v = metrics.get(k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v != v):
                raise UserError(f"{p / 'metrics.json'}: {k} must be a number or null, got {v!r:.40}")
            values[k] = v
        out.append(SeedValues(seed if isinstance(seed, int) else None, values, f"folder:{p}"))
    return out


def _json_mapping(path: Path) -> dict:
    from clrepro.files import read_json

    data = read_json(path, "JSON file")
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data
