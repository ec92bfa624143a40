"""Plug-ins in sweeps: a regularizer plug-in loaded by the driver (`--plugin`) is carried to the Ray workers of a
2-node cluster, registered there before the trial builds its config, and its hyperparameter is swept."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import numpy as np
import yaml

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # every process of a local test cluster agrees

PLUGIN = '''"""Swept L2 plug-in: unit importance; it notes the Ray node and process it ran in."""
import os

import torch

NAME = "swept_l2"
MARKS = {marks!r}


def estimate_importance(model, dataset, prev_params, device):
    import ray

    with open(os.path.join(MARKS, ray.get_runtime_context().get_node_id()), "a") as f:
        f.write(f"{{os.getpid()}}\\n")
    return {{n.replace(".", "__"): torch.ones_like(p) for g in model.param_list for n, p in g()}}


def compute_regularization_loss(model, importance, prev):
    return sum((importance[n.replace(".", "__")] * (p - prev[n.replace(".", "__")]) ** 2).sum()
               for g in model.param_list for n, p in g())
'''
OVERRIDES = ["benchmark=pdigits", "benchmark.num_tasks=2", "backbone.hidden=[32,16]", "trainer.batch_size=64"]


def _trial_runs(db: Path) -> list[dict]:
    con = sqlite3.connect(db)
    ids = [r[0] for r in con.execute("select r.run_uuid from runs r join tags t on t.run_uuid = r.run_uuid where "
                                     "t.key = 'clrepro.level' and t.value = 'trial'")]
    out = []
    for run_id in ids:
        tags = dict(con.execute("select key, value from tags where run_uuid = ?", (run_id,)))
        params = dict(con.execute("select key, value from params where run_uuid = ?", (run_id,)))
        metrics = dict(con.execute("select key, value from latest_metrics where run_uuid = ?", (run_id,)))
        out.append({"tags": tags, "params": params, "metrics": metrics})
    parent = dict(con.execute("select t.key, t.value from tags t join tags l on l.run_uuid = t.run_uuid where "
                              "l.key = 'clrepro.level' and l.value = 'sweep'"))
    con.close()
    return out, parent


def test_plugin_regularizer_swept_on_a_two_node_cluster(tmp_path):
    from ray.cluster_utils import Cluster

    from clrepro.sweep.runner import run_sweep

    marks = tmp_path / "marks"
    marks.mkdir()
    plugin = tmp_path / "swept_l2.py"
    plugin.write_text(PLUGIN.format(marks=str(marks)))
    spec = {"name": "plug", "experiment": {"name": "finetuning_pmnist", "overrides": [*OVERRIDES,
                                                                                       "algorithm.name=swept_l2"]},
            "search_space": {"algorithm.reg_strength": {"type": "categorical", "choices": [0.0, 10000.0]}},
            "metrics": ["AA", "BWT"], "seeds": {"tune": [1], "report": [7]}, "num_samples": 2,
            "max_concurrent_trials": 2, "resources": {"cpu": 1}, "sampler": {"name": "grid"}, "final": {"top_k": 1},
            "storage": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "tune_path": str(tmp_path / "tune")}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = cluster.add_node(num_cpus=1)
    node_ids = {cluster.head_node.node_id, worker.node_id}
    try:
        outcome = run_sweep(path, address=cluster.address, progress=False, plugins=[str(plugin)])
    finally:
        import ray

        ray.shutdown()
        cluster.shutdown()
    assert [t.status for t in outcome.trials] == ["DONE", "DONE"] and "aggregate" in outcome.final[0]
    trials, parent = _trial_runs(tmp_path / "mlflow.db")
    search = [t for t in trials if t["tags"].get("clrepro.group") == "search"]
    nodes = {t["tags"]["clrepro.node_id"] for t in search}
    assert nodes == node_ids  # one trial on each node
    # the plug-in itself ran on both nodes (after each task, in the trials' worker processes)
    assert {p.name for p in marks.iterdir()} >= nodes
    assert parent["clrepro.plugins"] == f"swept_l2={plugin}"
    # its effect: strength 0 is Finetuning exactly; strength 1e4 changes the result
    aa = {float(t["params"]["algorithm.reg_strength"]): t["metrics"]["AA_mean"] for t in search}
    from clrepro.config.load import load_experiment
    from clrepro.engine.loop import Engine

    finetuning = Engine(load_experiment("finetuning_pmnist", [*OVERRIDES, "trainer.threads=1"]), seed=1).run().acc
    assert aa[0.0] == float(np.mean(finetuning[-1]))
    assert abs(aa[10000.0] - aa[0.0]) > 0.05
