"""The continual-unlearning protocol: requests, the engine's unlearn step, references, DD/AGR in the run record."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from clrepro.config.load import load_experiment
from clrepro.engine.experiment import run_experiment
from clrepro.engine.loop import Engine
from clrepro.engine.unlearning import UnlearningPlan
from clrepro.errors import ConfigError

TINY = ["benchmark=pdigits", "benchmark.num_tasks=3", "backbone.hidden=[32,16]", "trainer.epochs=2",
        "trainer.batch_size=32"]


def cfg(*overrides, metrics="[AA]"):
    return load_experiment("finetuning_pmnist", [*TINY, f"metrics={metrics}", *overrides])


def state(algo):
    return {k: v.detach().clone() for k, v in {**{f"backbone.{k}": v for k, v in algo.backbone.state_dict().items()},
                                                **{f"heads.{k}": v for k, v in algo.heads.state_dict().items()}}.items()}


# ----- requests ---------------------------------------------------------------------------------------
def test_unlearnable_follows_the_age_and_what_was_unlearned():
    c = cfg("unlearning.requests={2:[1]}", "unlearning.unlearnable_age=2")
    plan = UnlearningPlan.from_config(c.unlearning, 3)
    assert plan.unlearnable(1, []) == [1]
    assert plan.unlearnable(2, []) == [1, 2]
    assert plan.unlearnable(3, []) == [2, 3]          # 3 − 1 = 2 is not < 2
    assert plan.unlearnable(3, [2]) == [3]
    assert plan.retrain_tasks() == [2, 3]


@pytest.mark.parametrize("requests,age,message", [
    ("{2:[3]}", 4, "task 3 cannot be unlearned after task 2: not trained yet"),
    ("{3:[1]}", 2, "task 1 cannot be unlearned after task 3: no longer unlearnable (age 2)"),
    ("{2:[1],3:[1]}", 4, "task 1 cannot be unlearned after task 3: already unlearned"),
    ("{4:[1]}", 4, "task 4 is not in the benchmark"),
    ("{2:[x]}", 4, "expected a task id"),
])
def test_bad_requests_are_one_config_error(requests, age, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        cfg(f"unlearning.requests={requests}", f"unlearning.unlearnable_age={age}")


def test_bad_request_on_the_command_line_is_one_line_exit_2():
    p = subprocess.run([sys.executable, "-m", "clrepro", "run", "finetuning_pmnist", *TINY,
                        "unlearning.requests={2:[3]}"], capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.strip() == ("error: configs/experiment/finetuning_pmnist.yaml: unlearning.requests.2: task 3 "
                                "cannot be unlearned after task 2: not trained yet (allowed: 1, 2)")


def test_an_algorithm_that_cannot_unlearn_is_refused_with_the_ones_that_can():
    with pytest.raises(ConfigError, match="'hat' cannot unlearn") as e:
        load_experiment("hat_pmnist", [*TINY, "unlearning.requests={2:[1]}"])
    allowed = str(e.value).split("(allowed: ")[1].rstrip(")").split(", ")
    assert {"amnesiac_hat", "finetuning", "independent", "ewc"} <= set(allowed) and "hat" not in allowed


# ----- the engine's unlearning step -------------------------------------------------------------------------
def test_update_deletion_subtracts_exactly_the_recorded_update_and_the_row_is_after_unlearning():
    eng = Engine(cfg("unlearning.requests={2:[1]}"))
    algo = eng.algorithm
    seen = {}
    real_start = algo.update_records.start

    def start(t):
        seen[f"start{t}"] = state(algo)
        real_start(t)

    real_unlearn = algo.unlearn

    def unlearn(ids):
        seen["before"] = state(algo)
        seen["delta1"] = {k: v.clone() for k, v in algo.update_records.delta(1).items()}
        real_unlearn(ids)
        seen["after"] = state(algo)

    algo.update_records.start, algo.unlearn = start, unlearn
    res = eng.run()
    after_task1 = seen["start2"]
    for k, d in seen["delta1"].items():  # Δθ^1 = θ(end of task 1) − θ(start of task 1)
        assert torch.allclose(d, after_task1[k] - seen["start1"][k], atol=1e-7), k
        assert torch.allclose(seen["after"][k], seen["before"][k] - d, atol=1e-7), k
    assert eng.unlearned == [1] and algo.unlearned_ids == [1]
    plain = Engine(cfg()).run()
    assert np.array_equal(res.acc[0], plain.acc[0], equal_nan=True)  # row 1: before any request
    assert res.acc[1, 0] != plain.acc[1, 0]                   # row 2 records task 1 after its unlearning
    assert any(h.get("phase") == "unlearn" and h["unlearned"] == [1] for h in res.history)


def test_unlearning_the_last_task_gives_the_retrain_model_so_dd_is_zero(tmp_path):
    c = cfg("unlearning.requests={3:[3]}", metrics="[AA,AA_remaining,DD,AGR]")
    result = run_experiment(c, tmp_path / "run")
    d = result.metrics["cul_details"]
    assert d["unlearned"] == [3] and d["dd_tasks"] == [3]
    # θ after task 3 minus Δθ^3 is θ after task 2, the retrain model (tasks 1, 2): identical features
    assert all(v < 1e-5 for v in d["dd_per_task"].values()), d["dd_per_task"]
    assert result.metrics["DD"] < 1e-5
    retrain = result.references["retrain"]
    assert np.isnan(retrain[2]).all() and np.isfinite(retrain[1, :2]).all()  # task 3 never trained
    # AGR over the remaining tasks 1, 2: main (= θ after task 2) against the original run (trained task 3 too)
    orig = result.references["original"]
    assert result.metrics["AGR"] == pytest.approx(np.mean(result.main.acc[2, :2] - orig[2, :2]), abs=1e-6)
    assert result.metrics["AA_remaining"] == pytest.approx(np.mean(result.main.acc[2, :2]))
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"dd.csv", "ag.csv", "refretrain", "reforiginal", "metrics.json"} <= files
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["cul_details"]["distance"] == "linear_cka" and m["cul_details"]["batch_size"] == 32


def test_independent_unlearns_exactly():
    c = cfg("algorithm=independent", "unlearning.requests={2:[1]}")
    eng = Engine(c)
    res = eng.run()
    algo = eng.algorithm
    assert "1" not in algo.task_backbones and "2" in algo.task_backbones
    x = eng.tests[1].x[:8]
    import copy

    reference = copy.deepcopy(algo.backbone)
    reference.load_state_dict(algo.initial_state)
    with torch.no_grad():
        valid = (algo.task_backbones["2"](x) + algo.task_backbones["3"](x)) / 2
        assert torch.allclose(algo.features(x), valid)  # φ averages the valid networks only (tasks 2, 3)
        assert torch.allclose(algo(x, 1), algo.heads(reference(x), 1))     # task 1 answers from θ_0
    assert res.acc[1, 0] < res.acc[0, 0]


def test_cul_metrics_without_references_are_undefined_not_errors():
    c = cfg("unlearning.requests={2:[1]}", "unlearning.retrain=off", metrics="[AA,AA_remaining,DD]")
    m = run_experiment(c).metrics
    assert m["DD"] is None and m["AA_remaining"] is not None and "AGR" not in m
    assert m["cul_details"]["retrain"] is False
