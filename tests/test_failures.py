"""Failed runs keep what they produced and say so; concurrent writers lose nothing; a local sweep stays local."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "clrepro"]
TINY3 = ["benchmark=pdigits", "benchmark.num_tasks=3", "backbone.hidden=[32]", "trainer.epochs=1",
         "trainer.batch_size=64", "metrics=[AA,BWT]", "trainer.threads=1"]

# A regularizer that turns the loss NaN from task 2 on (the regularization term starts after task 1).
NAN_PLUGIN = '''"""NaN from task 2: a diverging run."""
import torch

NAME = "nan_from_task2"


def estimate_importance(model, dataset, prev_params, device):
    return {}


def compute_regularization_loss(model, importance, prev_params):
    return torch.tensor(float("nan"))
'''


def test_nan_run_keeps_its_partial_outputs_and_says_where(tmp_path):
    plugin = tmp_path / "nan_plugin.py"
    plugin.write_text(NAN_PLUGIN)
    out = tmp_path / "run"
    p = subprocess.run([*CLI, "run", "--plugin", str(plugin), "finetuning_pmnist", *TINY3,
                        "algorithm.name=nan_from_task2", "--out", str(out), "--quiet"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
    err = p.stderr.strip().splitlines()
    assert p.returncode == 1, p.stdout + p.stderr
    assert len(err) == 1 and "Traceback" not in p.stdout + p.stderr, p.stderr
    line = err[0]
    assert line.startswith("error: run finetuning_pmnist failed: main run failed: TrainingDiverged: training loss "
                           "is nan in task 2, epoch 1"), line
    assert f"partial outputs kept in {out}: acc.csv (1 of 3 tasks)" in line and "manifest.json (status FAILED)" in line
    print(line)  # the one-line message (pytest -s shows it)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "FAILED" and manifest["tasks_done"] == 1 and manifest["num_tasks"] == 3
    assert manifest["failed_in"] == "main run" and manifest["error"].startswith("TrainingDiverged")
    from clrepro.metrics.io import read_acc_matrix

    import numpy as np

    acc = read_acc_matrix(out / "acc.csv")  # the matrix so far: row 1 only, readable by `clrepro metrics`
    assert acc.shape == (3, 3) and 0 <= acc[0, 0] <= 1 and np.isnan(acc[1:]).all()
    history = json.loads((out / "history.json").read_text())
    assert [h["task"] for h in history] == [1]  # task 1's epoch; task 2's diverged epoch is not a result
    assert "nan_from_task2" in (out / "config.yaml").read_text()
    assert "TrainingDiverged" in (out / "error.txt").read_text()
    assert not (out / "metrics.json").exists()  # no metrics from a failed run


# ---- R5: concurrent writers ------------------------------------------------------------------------------
N_WRITERS, N_PARAMS, N_STEPS, N_TAGS = 8, 40, 30, 10


def _writer(uri: str, exp_id: str, i: int, barrier) -> None:
    """One trial's writes (the calls a seed run makes), started together with the others."""
    import logging

    logging.disable(logging.WARNING)
    from clrepro.tracking.mlflow_store import MlflowStore

    store = MlflowStore(uri, exp_id)
    barrier.wait()
    run = store.create_run(f"writer-{i}", {"clrepro.level": "seed", "clrepro.writer": i})
    store.log_params(run, {f"p{k}": k * i for k in range(N_PARAMS)})
    for step in range(N_STEPS):  # one batch per step, as per-task values arrive
        store.log_metrics(run, {"loss": 1.0 / (step + 1), "acc": step / N_STEPS}, step=step)
    store.log_series(run, {"AA": [0.5] * N_STEPS}, {})
    store.set_tags(run, {f"clrepro.t{k}": k for k in range(N_TAGS)})
    store.set_status(run, "FINISHED")


def _write_concurrently(uri: str) -> str:
    from clrepro.tracking.mlflow_store import MlflowStore

    exp_id = MlflowStore(uri).ensure_experiment("concurrency")
    ctx = mp.get_context("forkserver")  # writers forked from one clean process that imported MLflow once
    ctx.set_forkserver_preload(["clrepro.tracking.mlflow_store", "mlflow.tracking", "mlflow.entities",
                                "mlflow.store.tracking.sqlalchemy_store"])
    barrier = ctx.Barrier(N_WRITERS)
    procs = [ctx.Process(target=_writer, args=(uri, exp_id, i, barrier)) for i in range(N_WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    assert [p.exitcode for p in procs] == [0] * N_WRITERS
    return exp_id


def _ensure(uri: str, name: str, barrier, out) -> None:
    """One table worker's first call: ask for the table's experiment, started together with the others."""
    import logging

    logging.disable(logging.WARNING)
    from clrepro.tracking.mlflow_store import MlflowStore

    store = MlflowStore(uri)
    barrier.wait()
    out.put(store.ensure_experiment(name))


def test_processes_that_create_one_new_experiment_at_once_all_get_it(tmp_path):
    """The CI failure of `make tables --jobs 2`: two seed workers both found no 'table/...' experiment and both
    inserted it; the loser raised UNIQUE constraint failed. Every process must get the one experiment."""
    from clrepro.tracking.mlflow_store import MlflowStore

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    MlflowStore(uri).client.search_experiments()  # migrations once, as produce_missing does before its workers
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["clrepro.tracking.mlflow_store", "mlflow.tracking"])
    barrier, out = ctx.Barrier(6), ctx.Queue()
    procs = [ctx.Process(target=_ensure, args=(uri, "table/race", barrier, out)) for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * 6
    ids = {out.get(timeout=5) for _ in procs}
    assert len(ids) == 1 and ids == {MlflowStore(uri).ensure_experiment("table/race")}


def test_losing_the_insert_race_reads_the_winners_experiment(tmp_path, monkeypatch):
    """Deterministic form of the race: the lookup saw no experiment, then another process inserted it."""
    from clrepro.tracking.mlflow_store import MlflowStore

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    winner = MlflowStore(uri).ensure_experiment("table/x", description="made first")
    loser = MlflowStore(uri)
    real = loser.client.get_experiment_by_name
    calls = []

    def stale_once(name):
        calls.append(name)
        return None if len(calls) == 1 else real(name)

    monkeypatch.setattr(loser.client, "get_experiment_by_name", stale_once)
    assert loser.ensure_experiment("table/x") == winner
    assert len(calls) == 2


def _count(uri: str, exp_id: str) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([exp_id], max_results=100)
    return {"runs": len(runs), "finished": sum(r.info.status == "FINISHED" for r in runs),
            "params": sum(len(r.data.params) for r in runs),
            "tags": sum(len([k for k in r.data.tags if k.startswith("clrepro.t")]) for r in runs),
            "points": sum(len(client.get_metric_history(r.info.run_id, k)) for r in runs
                          for k in ("loss", "acc", "series/AA"))}


EXPECTED = {"runs": N_WRITERS, "finished": N_WRITERS, "params": N_WRITERS * N_PARAMS, "tags": N_WRITERS * N_TAGS,
            "points": N_WRITERS * 3 * N_STEPS}


def test_eight_concurrent_writers_lose_nothing_on_sqlite(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    exp_id = _write_concurrently(uri)
    assert _count(uri, exp_id) == EXPECTED  # 8 runs, 320 params, 80 tags, 720 metric points
    con = sqlite3.connect(tmp_path / "mlflow.db")  # and counted on the file itself
    assert con.execute("select count(*) from params").fetchone()[0] == N_WRITERS * N_PARAMS
    assert con.execute("select count(*) from metrics").fetchone()[0] == N_WRITERS * 3 * N_STEPS
    con.close()


@pytest.fixture
def mlflow_server(tmp_path):
    """A local `mlflow server` on 127.0.0.1 (a free port), stopped by its PID with its children."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
                             "--default-artifact-root", str(tmp_path / "artifacts")],
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2).read()
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not start: " + (tmp_path / "server.log").read_text()[-2000:])
        yield url, tmp_path / "server.db"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its worker: its own process group only
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        log.close()


def test_eight_concurrent_writers_lose_nothing_on_a_server(mlflow_server):
    url, db = mlflow_server
    exp_id = _write_concurrently(url)
    assert _count(url, exp_id) == EXPECTED
    con = sqlite3.connect(db)  # the server's store, counted directly
    assert con.execute("select count(*) from params").fetchone()[0] == N_WRITERS * N_PARAMS
    assert con.execute("select count(*) from metrics").fetchone()[0] == N_WRITERS * 3 * N_STEPS
    con.close()


# ---- the sweep environment -------------------------------------------------------------------------------
def _sweep_file(tmp_path: Path, **changes) -> Path:
    spec = {"name": "env", "experiment": {"name": "hat_pmnist", "overrides": [
        "benchmark=pdigits", "benchmark.num_tasks=2", "backbone.hidden=[16]", "trainer.epochs=1",
        "trainer.batch_size=64"]},
        "search_space": {"optimizer.lr": {"type": "categorical", "choices": [0.01]}},
        "metrics": ["AA", "BWT"], "seeds": {"tune": [1], "report": []}, "num_samples": 1, "final": {"top_k": 0},
        "sampler": {"name": "grid"}, "max_concurrent_trials": 1,
        "storage": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "tune_path": str(tmp_path / "tune")}}
    spec.update(changes)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _statuses(db: Path) -> list[tuple[str, str]]:
    con = sqlite3.connect(db)
    rows = con.execute("select t.value, r.status from runs r join tags t on t.run_uuid = r.run_uuid "
                       "where t.key = 'clrepro.level'").fetchall()
    con.close()
    return rows


def test_local_sweep_never_joins_another_cluster_and_a_failed_sweep_leaves_no_run_running(tmp_path, monkeypatch):
    """Another Ray cluster runs on the machine and RAY_ADDRESS names it: a local sweep (no --address) starts its
    own instance anyway. Its driver then fails after the trials (a broken summary step): the parent run is
    FAILED with its error, and no run stays RUNNING."""
    from ray.cluster_utils import Cluster

    from clrepro.sweep import runner

    def broken(*a, **k):
        raise RuntimeError("summary exploded")

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    other = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    other_node = other.head_node.node_id
    try:
        monkeypatch.setenv("RAY_ADDRESS", other.address)
        monkeypatch.setattr(runner, "_optuna_plots", broken)
        with pytest.raises(RuntimeError, match="summary exploded"):
            runner.run_sweep(_sweep_file(tmp_path), progress=False, num_cpus=1)
        assert os.environ.get("RAY_ADDRESS") is None  # the local sweep ignored it
    finally:
        import ray

        ray.shutdown()
        other.shutdown()
    con = sqlite3.connect(tmp_path / "mlflow.db")
    nodes = {v for (v,) in con.execute("select value from tags where key = 'clrepro.node_id'")}
    error = con.execute("select t.value from tags t join tags l on l.run_uuid = t.run_uuid where "
                        "l.key = 'clrepro.level' and l.value = 'sweep' and t.key = 'clrepro.error'").fetchone()
    con.close()
    assert nodes and other_node not in nodes  # the trial ran on the sweep's own node
    rows = _statuses(tmp_path / "mlflow.db")
    assert ("sweep", "FAILED") in rows and ("trial", "FINISHED") in rows
    assert not [r for r in rows if r[1] == "RUNNING"], rows
    assert error and "summary exploded" in error[0]
