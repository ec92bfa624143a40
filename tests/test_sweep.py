"""Sweeps: validation, a 2-node cluster, a NaN trial failed everywhere, resume without loss or duplicates."""

from __future__ import annotations

import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # every process of a local test cluster agrees (docs/cluster.md)

ROOT = Path(__file__).resolve().parents[1]
TINY_EXPERIMENT = {"name": "hat_pmnist",
                   "overrides": ["benchmark=pdigits", "benchmark.num_tasks=2", "backbone.hidden=[32,16]",
                                 "trainer.batch_size=64"]}


def sweep_file(tmp_path: Path, **changes) -> Path:
    spec = {"name": "t", "experiment": TINY_EXPERIMENT,
            "search_space": {"algorithm.s_max": {"type": "categorical", "choices": [100.0, 400.0]},
                             "optimizer.lr": {"type": "float", "low": 0.003, "high": 0.03, "log": True}},
            "metrics": ["AA", "BWT"], "seeds": {"tune": [1, 2], "report": [7]}, "num_samples": 4,
            "max_concurrent_trials": 2, "resources": {"cpu": 1}, "sampler": {"name": "random", "seed": 0},
            "storage": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "tune_path": str(tmp_path / "tune")}}
    for k, v in changes.items():
        spec[k] = v
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def runs(db: Path, level: str, group: str | None = None) -> list[dict]:
    """Active runs of a level from the MLflow SQLite store, with their clrepro tags and status."""
    con = sqlite3.connect(db)
    rows = con.execute("select r.run_uuid, r.status from runs r join tags t on t.run_uuid = r.run_uuid "
                       "where t.key = 'clrepro.level' and t.value = ? and r.lifecycle_stage = 'active'",
                       (level,)).fetchall()
    out = []
    for run_id, status in rows:
        tags = dict(con.execute("select key, value from tags where run_uuid = ?", (run_id,)).fetchall())
        if group is None or tags.get("clrepro.group") == group:
            out.append({"id": run_id, "status": status, **tags})
    con.close()
    return out


@pytest.mark.parametrize("change, expected", [
    ({"num_samples": 0}, "num_samples: 0 is out of range"),
    ({"objective": {"metric": "XX"}}, "objective.metric: 'XX' is not allowed (allowed: AA, BWT, FWT, FR, AA_remaining, DD, AGR)"),
    ({"search_space": {"optimizer.lrr": {"type": "float", "low": 0.001, "high": 0.1}}},
     "search_space.optimizer.lrr: unknown key (allowed: betas, eps, lr, momentum, name, weight_decay)"),
    ({"search_space": {"optimizer.lr": {"type": "uniform", "low": 0.001, "high": 0.1}}},
     "search_space.optimizer.lr.type: 'uniform' is not allowed (allowed: float, int, categorical)"),
    ({"search_space": {"optimizer.lr": {"type": "float", "low": 0.1, "high": 0.01}}},
     "search_space.optimizer.lr.low: 0.1 is not below high=0.01"),
    ({"seeds": {"tune": [1, 2], "report": [2]}}, "seeds.report: must be disjoint from seeds.tune"),
    ({"scheduler": {"name": "hyperband"}}, "scheduler.name: 'hyperband' is not allowed (allowed: none, asha)"),
    ({"search_space": {"algorithm.s_max": {"type": "categorical", "choices": [0.5]}}},
     "search_space.algorithm.s_max: 0.5 is out of range"),
])
def test_bad_sweep_file_is_refused_with_exit_code_2(tmp_path, change, expected):
    path = sweep_file(tmp_path, **change)
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "clrepro", "sweep", str(path)], capture_output=True, text=True,
                       cwd=tmp_path, timeout=120)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: "), p.stderr
    assert expected in lines[0]
    assert not (tmp_path / "tune").exists()  # refused before anything started
    assert time.perf_counter() - t0 < 30


def all_statuses(db: Path) -> dict[str, int]:
    """Status counts over every run in the store, deleted ones included."""
    con = sqlite3.connect(db)
    rows = con.execute("select status, count(*) from runs group by status").fetchall()
    con.close()
    return dict(rows)


def test_lost_worker_node_is_retried_and_every_trial_runs_once(tmp_path):
    """R3: a two-node cluster loses its worker node mid-sweep; Tune's FailureConfig retries the trial it held on
    the head node, and the sweep ends with every trial once, FINISHED, and no run RUNNING."""
    import threading

    from ray.cluster_utils import Cluster

    from clrepro.sweep.runner import run_sweep

    fast_detection = {"health_check_period_ms": 500, "health_check_failure_threshold": 3}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "_system_config": fast_detection})
    worker = cluster.add_node(num_cpus=1)
    db = tmp_path / "mlflow.db"
    lost: dict = {}

    def remove_worker_once_it_trains():
        deadline = time.time() + 240
        while time.time() < deadline and not lost:
            try:
                busy = [t for t in runs(db, "trial", "search")
                        if t.get("clrepro.node_id") == worker.node_id and t["status"] == "RUNNING"]
                seeds = [s for s in runs(db, "seed", "search") if s["status"] == "RUNNING"]
            except (sqlite3.OperationalError, sqlite3.DatabaseError):
                busy, seeds = [], []
            mine = [t for t in busy if any(s.get("mlflow.parentRunId") == t["id"] for s in seeds)]
            if mine:
                lost["trial"] = mine[0]["clrepro.trial_id"]
                cluster.remove_node(worker, allow_graceful=False)  # the node dies: its processes are killed
                return
            time.sleep(0.2)

    remover = threading.Thread(target=remove_worker_once_it_trains, daemon=True)
    remover.start()
    try:
        outcome = run_sweep(sweep_file(tmp_path, seeds={"tune": [1, 2], "report": [7]}), address=cluster.address,
                            progress=False)
    finally:
        remover.join(timeout=5)
        import ray

        ray.shutdown()
        cluster.shutdown()
    assert lost, "the worker node never ran a trial"
    trials = runs(db, "trial", "search")
    ids = [t["clrepro.trial_id"] for t in trials]
    assert len(ids) == len(set(ids)) == 4 and all(t["status"] == "FINISHED" for t in trials)
    retried = next(t for t in trials if t["clrepro.trial_id"] == lost["trial"])
    assert retried["clrepro.node_id"] != worker.node_id  # finished on the head node after the retry
    seeds = runs(db, "seed", "search")
    pairs = [(s["clrepro.trial_id"], s["clrepro.seed"]) for s in seeds]
    assert len(pairs) == len(set(pairs)) == 8 and all(s["status"] == "FINISHED" for s in seeds)
    assert all(t.status == "DONE" for t in outcome.trials) and outcome.final and "aggregate" in outcome.final[0]
    assert outcome.retried >= 1  # Tune's FailureConfig restarted it (max_failures, default 2)
    assert "RUNNING" not in all_statuses(db)  # the lost node's seed run was closed (KILLED), then replaced


def test_nan_trial_is_failed_everywhere_and_the_sweep_goes_on(tmp_path):
    from clrepro.sweep.runner import run_sweep

    path = sweep_file(tmp_path, sampler={"name": "grid"}, seeds={"tune": [1], "report": [7]},
                      search_space={"optimizer.lr": {"type": "categorical", "choices": [0.01, 1.0e30]}})
    outcome = run_sweep(path, progress=False)
    by_lr = {t.params["optimizer.lr"]: t for t in outcome.trials}
    assert by_lr[1e30].status == "FAILED" and "TrainingDiverged" in by_lr[1e30].error
    assert by_lr[0.01].status == "DONE"
    # MLflow: the trial run and its seed run are FAILED with the error recorded
    failed = [t for t in runs(tmp_path / "mlflow.db", "trial", "search") if t["status"] == "FAILED"]
    assert len(failed) == 1 and "TrainingDiverged" in failed[0]["clrepro.error"]
    assert any(s["status"] == "FAILED" for s in runs(tmp_path / "mlflow.db", "seed", "search"))
    # Optuna: told FAIL, never a partial value
    state_file = next(outcome.sweep_dir.glob("searcher-state-*.pkl"))
    saved = pickle.loads(state_file.read_bytes())
    inner = pickle.loads(saved["inner"])
    states = {t.params["optimizer.lr"]: t.state.name for t in inner["_ot_study"].trials}
    assert states == {0.01: "COMPLETE", 1e30: "FAIL"}
    # the sweep went on: the final group re-ran the good configuration
    assert outcome.final[0]["trial"].params["optimizer.lr"] == 0.01
    assert len(runs(tmp_path / "mlflow.db", "seed", "final")) == 1


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (from /proc)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def wait_for(db: Path, predicate, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if db.exists():
            try:
                if predicate():
                    return
            except (sqlite3.OperationalError, sqlite3.DatabaseError):
                pass
        time.sleep(0.3)
    pytest.fail("the sweep never got there")


def test_interrupted_and_killed_sweep_resumes_with_every_trial_exactly_once(tmp_path):
    """Ctrl-C (exit 130, state saved), --resume, kill -9 mid-seed, --resume again: every trial and seed run once,
    all FINISHED, and no run left RUNNING (R1)."""
    path = sweep_file(tmp_path, num_samples=6, max_concurrent_trials=1)
    db = tmp_path / "mlflow.db"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "clrepro", "sweep", str(path), "--quiet"]

    def finished(level: str) -> int:
        return len([t for t in runs(db, level, "search") if t["status"] == "FINISHED"])

    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    wait_for(db, lambda: finished("trial") >= 2)  # interrupt once two trials have finished
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130  # interrupted: state saved, nothing finalised
    log.close()
    before = runs(db, "trial", "search")
    assert 2 <= len([t for t in before if t["status"] == "FINISHED"]) < 6
    assert "RUNNING" not in all_statuses(db)  # Ctrl-C closes what it stopped as KILLED
    assert [s["status"] for s in runs(db, "sweep")] == ["KILLED"]

    # resume, then kill -9 the driver and everything it started in the middle of a seed run
    seeds_done = finished("seed")
    log = open(tmp_path / "second.log", "w")
    proc = subprocess.Popen([*cmd, "--resume"], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    wait_for(db, lambda: finished("seed") >= seeds_done + 1
             and any(s["status"] == "RUNNING" for s in runs(db, "seed", "search")))
    tree = descendants(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    for pid in tree:  # the Ray processes this sweep started, by their ids
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=60)
    log.close()
    assert all_statuses(db).get("RUNNING", 0) >= 2  # what a kill -9 leaves: the parent, a trial and its seed

    p = subprocess.run([*cmd, "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "closed" in p.stdout and "left RUNNING as KILLED" in p.stdout
    trials = runs(db, "trial", "search")
    ids = [t["clrepro.trial_id"] for t in trials]
    assert len(ids) == len(set(ids)) == 6
    assert all(t["status"] == "FINISHED" for t in trials)
    seeds = runs(db, "seed", "search")
    pairs = [(s["clrepro.trial_id"], s["clrepro.seed"]) for s in seeds]
    assert len(pairs) == len(set(pairs)) == 12 and all(s["status"] == "FINISHED" for s in seeds)
    assert [s["status"] for s in runs(db, "sweep")] == ["FINISHED"]
    finals = runs(db, "trial", "final")
    assert len(finals) == 1 and finals[0]["status"] == "FINISHED"
    assert len(runs(db, "seed", "final")) == 1
    statuses = all_statuses(db)
    assert "RUNNING" not in statuses and statuses.get("KILLED", 0) >= 1, statuses  # interrupted ones: KILLED
