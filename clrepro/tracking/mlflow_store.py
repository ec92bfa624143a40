"""MLflow tracking: sweep → trial → seed runs nested by explicit parent tags, found again by clrepro tags."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from clrepro.tracking.uri import (TRACKING_SCHEMES, absolute_tracking_uri,  # noqa: F401  (re-exported)
                                  check_store_contents, checked_tracking_uri)

TAG = "clrepro."  # prefix of every clrepro tag
LEVEL, SWEEP, SWEEP_DIR, TRIAL_ID, GROUP, SEED = (TAG + k for k in
                                                  ("level", "sweep", "sweep_dir", "trial_id", "group", "seed"))
PARENT = "mlflow.parentRunId"


RETRY_SECONDS = 60.0  # how long a write waits for a busy store (8+ concurrent trials on one SQLite file)
_TRANSIENT = ("database is locked", "database table is locked", "database is busy", "connection reset",
              "connection aborted", "remote end closed", "error code 502", "error code 503", "error code 504",
              "too many 50")


def _retry(fn: Callable, *args, attempts: int = 200, **kwargs):
    """Call an MLflow client method, retrying a busy store (SQLite's 'database is locked', a server's 503)
    with jittered exponential back-off for up to RETRY_SECONDS: concurrent trials lose no write."""
    import random

    deadline = time.monotonic() + RETRY_SECONDS
    for i in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # MlflowException wraps sqlalchemy's OperationalError
            text = str(e).lower()
            if not any(t in text for t in _TRANSIENT) or i == attempts - 1 or time.monotonic() > deadline:
                raise
            time.sleep(min(2.0, 0.02 * 2 ** min(i, 10)) * (0.5 + random.random()))


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} → {'a.b': 1} (lists kept as values)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


class MlflowStore:
    """A thin, retrying wrapper of MlflowClient for one experiment."""

    def __init__(self, tracking_uri: str, experiment_id: str | None = None) -> None:
        import logging

        from mlflow.tracking import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # no INFO lines about creating tables

        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.experiment_id = experiment_id

    # ----- experiments and runs ----------------------------------------------------------------------
    def ensure_experiment(self, name: str, artifact_root: Path | None = None, description: str | None = None) -> str:
        """The experiment's id, created once with an explicit artifact location, marked as a model-training
        experiment (MLflow's runs view, not its GenAI traces) and given `description`. Safe when several
        processes ask for the same new experiment at once: the ones that lose the insert read the winner's."""
        from clrepro.tracking.names import EXPERIMENT_KIND, MODEL_TRAINING, NOTE

        exp = _retry(self.client.get_experiment_by_name, name)
        tags = {EXPERIMENT_KIND: MODEL_TRAINING, **({NOTE: description} if description else {})}
        if exp is None:
            location = None
            if self.tracking_uri.startswith("sqlite:"):
                root = artifact_root or Path(self.tracking_uri[len("sqlite:///"):]).parent / "mlartifacts"
                location = (Path(root) / name).resolve().as_uri()
            try:
                self.experiment_id = _retry(self.client.create_experiment, name, artifact_location=location,
                                            tags=tags)
                return self.experiment_id
            except Exception as e:  # another process created it between the lookup and the insert
                if "already exists" not in str(e).lower():
                    raise
                exp = _retry(self.client.get_experiment_by_name, name)
                if exp is None:
                    raise
        if exp.lifecycle_stage == "deleted":
            _retry(self.client.restore_experiment, exp.experiment_id)
        self.experiment_id = exp.experiment_id
        for k, v in tags.items():  # an experiment made before these tags, or a sweep file changed since
            if exp.tags.get(k) != v:
                _retry(self.client.set_experiment_tag, exp.experiment_id, k, v)
        return self.experiment_id

    def create_run(self, name: str, tags: dict[str, Any], parent: str | None = None) -> str:
        """A run named `name`; the User, Source and Version columns' tags come from this process (a top-level
        run) or from the parent run (a trial or seed run in a Ray worker is the driver's command)."""
        from clrepro.tracking.names import SOURCE_TAGS, source_tags

        base = source_tags()
        if parent:
            inherited = {k: v for k, v in self.run_tags(parent).items() if k in SOURCE_TAGS}
            base = inherited or base
        tags = {**base, **{k: str(v) for k, v in tags.items()}}
        if parent:
            tags[PARENT] = parent  # explicit nesting: fluent nesting does not cross Ray processes
        return _retry(self.client.create_run, self.experiment_id, tags=tags, run_name=name).info.run_id

    def find_runs(self, tags: dict[str, Any], statuses: Iterable[str] | None = None) -> list:
        """Active (not deleted) runs carrying all `tags`, optionally with one of `statuses`."""
        filt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        runs = []
        token = None
        while True:
            page = _retry(self.client.search_runs, [self.experiment_id], filter_string=filt, max_results=1000,
                          page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                break
        if statuses is not None:
            runs = [r for r in runs if r.info.status in set(statuses)]
        return runs

    def delete_run(self, run_id: str) -> None:
        _retry(self.client.delete_run, run_id)

    def set_status(self, run_id: str, status: str) -> None:
        if status == "RUNNING":
            _retry(self.client.update_run, run_id, status="RUNNING")
        else:
            _retry(self.client.set_terminated, run_id, status=status)

    def fail(self, run_id: str, error: BaseException | str) -> None:
        """Record a failed run with its error (tag; the traceback as error.txt), status FAILED."""
        import traceback

        if isinstance(error, str):
            text = first = error
        else:
            first = f"{type(error).__name__}: {error}"
            text = "".join(traceback.format_exception(error)) if error.__traceback__ else first
        self.set_tags(run_id, {TAG + "error": first.strip().splitlines()[0][:4000] if first.strip() else "error"})
        self.log_text(run_id, text, "error.txt")
        self.set_status(run_id, "FAILED")

    def end_with(self, run_id: str, error: BaseException) -> None:
        """A run ended by an exception: KILLED if it was stopped (Ctrl-C, a scheduler's stop), else FAILED."""
        if isinstance(error, Exception):
            self.fail(run_id, error)
        else:
            why = "scheduler" if isinstance(error, SystemExit) else type(error).__name__
            self.set_tags(run_id, {TAG + "stopped_by": why})
            self.set_status(run_id, "KILLED")

    def close_running(self, tags: dict[str, Any], status: str, reason: str, parent: str | None = None) -> int:
        """Runs with `tags` (and parent) still RUNNING get `status` (KILLED or FAILED) and a reason tag, their
        RUNNING children too (a trial's seed runs); returns how many were closed."""
        closed = 0
        query = {**tags, **({PARENT: parent} if parent else {})}
        for run in self.find_runs(query, statuses=["RUNNING"]):
            self.set_tags(run.info.run_id, {TAG + "ended_by": reason})
            self.set_status(run.info.run_id, status)
            closed += 1
        return closed

    # ----- logging ---------------------------------------------------------------------------------------
    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        _retry(self.client.log_batch, run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):
            _retry(self.client.log_batch, run_id, params=items[i:i + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float | None], step: int = 0,
                    stepped: list[dict[str, float]] = ()) -> None:
        """Log finite metrics in one batch (None and NaN are skipped: MLflow stores no 'undefined');
        `stepped[i]` is logged at step i + 1 (per-task values) in the same batch."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        rows = [(metrics, step)] + [(m, i + 1) for i, m in enumerate(stepped)]
        items = [Metric(k, float(v), now, s) for values, s in rows for k, v in values.items()
                 if v is not None and math.isfinite(float(v))]
        for i in range(0, len(items), 500):
            _retry(self.client.log_batch, run_id, metrics=items[i:i + 500])

    def log_series(self, run_id: str, series: dict[str, list[float | None]], first_step: dict[str, int]) -> None:
        """Per-N series as stepped metrics `series/<name>` (step = N)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(f"series/{k}", float(v), now, first_step.get(k, 1) + i)
                 for k, values in series.items() for i, v in enumerate(values)
                 if v is not None and math.isfinite(float(v))]
        for i in range(0, len(items), 500):
            _retry(self.client.log_batch, run_id, metrics=items[i:i + 500])

    def log_artifacts(self, run_id: str, folder: Path, path: str | None = None) -> None:
        _retry(self.client.log_artifacts, run_id, str(folder), path)

    def log_text(self, run_id: str, text: str, name: str) -> None:
        """`text` as artifact `name` (a path: "plugins/x.py" goes in folder plugins/)."""
        _retry(self.client.log_text, run_id, text, name)

    def run_tags(self, run_id: str) -> dict[str, str]:
        return dict(_retry(self.client.get_run, run_id).data.tags)

    def run_metrics(self, run_id: str) -> dict[str, float]:
        return dict(_retry(self.client.get_run, run_id).data.metrics)

    def download(self, run_id: str, path: str, dst: Path) -> Path:
        return Path(_retry(self.client.download_artifacts, run_id, path, str(dst)))
