"""Logging one experiment result (a seed run) to MLflow: metrics, per-N series, per-task extras, artifacts."""

from __future__ import annotations

from pathlib import Path

from clrepro.config.schema import METRICS
from clrepro.tracking.mlflow_store import TAG, MlflowStore

SERIES_FIRST_N = {"AA": 1, "BWT": 2, "FWT": 2, "FR_I": 1}  # the N of each series' first value


def run_tags(cfg) -> dict[str, str]:
    """Tags naming what a seed run ran (algorithm, benchmark, experiment)."""
    return {TAG + "algorithm": cfg.algorithm.get("name", "?"), TAG + "benchmark": cfg.benchmark.get("name", "?"),
            TAG + "experiment": cfg.name}


def log_experiment_result(store: MlflowStore, run_id: str, result, folder: Path) -> None:
    """A seed run's record: config hash, AA/BWT/FWT/FR and timings, series by N, extras by task, the run folder."""
    m = result.metrics
    store.set_tags(run_id, {TAG + "config_hash": result.config_hash})
    store.log_metrics(run_id, {k: m.get(k) for k in METRICS} | {
        "engine_seconds": result.engine_seconds, "train_seconds": result.main.train_seconds,
        "eval_seconds": result.main.eval_seconds, "wall_seconds": result.wall_seconds},
        stepped=m.get("task_extras", []))
    store.log_series(run_id, m["series"], SERIES_FIRST_N)
    store.log_artifacts(run_id, folder)
