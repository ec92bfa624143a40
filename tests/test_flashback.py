"""Flashback Learning: phase 2 starts from the old model exactly, the plasticity term, the same epoch budget."""

from __future__ import annotations

import pytest
import torch

from clrepro.algorithms.base import Batch, Step
from clrepro.algorithms.flashback import Flashback
from clrepro.config.load import load_experiment
from clrepro.engine.loop import Engine
from clrepro.errors import ConfigError

TINY = ["benchmark=pdigits", "benchmark.num_tasks=3", "backbone.hidden=[32,16]", "backbone.batch_norm=false",
        "trainer.epochs=2", "trainer.batch_size=32", "metrics=[AA]"]


def flashback(*overrides):
    return load_experiment("finetuning_pmnist", [*TINY, "algorithm=flashback", *overrides])


def state(algo):
    return {k: v.detach().clone() for k, v in algo.host.state_dict().items()
            if k.startswith(("backbone.", "heads."))}


def test_phase_two_starts_from_the_old_models_exact_weights(monkeypatch):
    seen = {}
    real = Flashback.start_phase

    def spy(self, name):
        if name == "primary":
            seen.setdefault("old", []).append(state(self))
        real(self, name)
        if name == "flashback":
            seen.setdefault("flashback_start", []).append(state(self))

    monkeypatch.setattr(Flashback, "start_phase", spy)
    eng = Engine(flashback("algorithm.host.name=online_ewc"))
    eng.run()
    assert len(seen["old"]) == len(seen["flashback_start"]) == 2  # tasks 2 and 3
    for old, fb in zip(seen["old"], seen["flashback_start"]):
        assert old.keys() == fb.keys()
        for k in old:
            assert torch.equal(old[k], fb[k]), k


def test_phase_one_moves_the_model_and_phase_two_keeps_the_primary_knowledge():
    eng = Engine(flashback("algorithm.host.name=online_ewc", "algorithm.alpha_p=2.0"))
    algo = eng.algorithm
    captured = {}
    real = algo.start_phase

    def spy(name):
        if name == "primary":
            captured["old"] = state(algo)
        if name == "flashback":
            captured["primary"] = state(algo)
        real(name)
        if name == "flashback":
            captured["knowledge"] = algo._knowledge

    algo.start_phase = spy
    eng.run()
    moved = [k for k in captured["old"] if not torch.equal(captured["old"][k], captured["primary"][k])]
    assert any(k.startswith("backbone.") for k in moved)  # phase 1 trained the host
    kn = captured["knowledge"]
    for n, theta_p in kn.theta.items():  # θ_p is the primary model's parameters
        assert torch.equal(theta_p, captured["primary"][n])


def test_plasticity_term_is_alpha_times_half_lambda_fisher_distance_and_the_name_bug_removes_it():
    cfg = flashback("algorithm.host.name=online_ewc", "algorithm.alpha_p=3.0")
    eng = Engine(cfg)
    algo = eng.algorithm
    task = eng._task(1)
    algo.setup_task(task, 1)
    algo.end_task(task)
    task2 = eng._task(2)
    algo.setup_task(task2, 1)
    algo.start_phase("primary")
    with torch.no_grad():  # a hand-made "primary model": shift every regularized parameter by 0.01
        for _, p in algo.host.named_regularized_parameters():
            p.add_(0.01)
    algo.start_phase("flashback")
    kn = algo._knowledge
    batch = Batch(task2.train.x[:16], task2.train.y[:16], 2)
    step = Step(2, 0, 0, 1, 0)
    host_loss = algo.host.training_loss(batch, step)
    lam = algo.host.reg_strength
    # θ = θ_old = θ_p − 0.01 everywhere, so the term is α_p · λ · ½ · ΣF_p · 0.01²
    expected = 3.0 * lam * 0.5 * sum(f.sum() for f in kn.fisher.values()) * 1e-4
    assert expected > 0
    assert algo.training_loss(batch, step).item() == pytest.approx((host_loss + expected).item(), rel=1e-4)
    algo.cfg.oewc_plasticity_name_bug = True
    assert algo.training_loss(batch, step).item() == pytest.approx(host_loss.item(), rel=1e-6)


def test_same_budget_phases_and_epoch_split():
    algo = Engine(flashback("algorithm.primary_fraction=0.25")).algorithm
    algo.seen_tasks = [1]
    assert algo.phases(1, 4) == [("train", 4)]
    algo.seen_tasks = [1, 2]
    assert algo.phases(2, 4) == [("primary", 1), ("flashback", 3)]
    assert algo.phases(2, 2) == [("primary", 1), ("flashback", 1)]
    with pytest.raises(ConfigError, match="cannot be split"):
        algo.phases(2, 1)
    fl = Engine(flashback("algorithm.host.name=der")).run()
    host = Engine(load_experiment("finetuning_pmnist", [*TINY, "algorithm=der"])).run()
    assert fl.steps == host.steps  # the same training budget as the host


def test_flashback_der_buffer_sees_each_example_once():
    eng = Engine(flashback("algorithm.host.name=der"))
    eng.run()
    host = Engine(load_experiment("finetuning_pmnist", [*TINY, "algorithm=der"]))
    host.run()
    # phase 1's insertions are discarded with the primary host: the buffer saw task 1's two epochs and one
    # epoch (phase 2) of tasks 2 and 3, i.e. fewer examples than the host, never twice the same step
    nb = [eng._num_batches(len(eng.benchmark.task(t).train)) * 32 for t in (1, 2, 3)]
    assert eng.algorithm.host.buffer.seen == 2 * nb[0] + nb[1] + nb[2]
    assert host.algorithm.buffer.seen == 2 * sum(nb)


def test_unknown_host_is_a_config_error():
    with pytest.raises(ConfigError, match="cannot host Flashback"):
        flashback("algorithm.host.name=si")
