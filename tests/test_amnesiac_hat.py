"""AmnesiacHAT: update deletion, backups and compensation, replay repairing (B14), stale masks (B12), end to end."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from clrepro.algorithms.amnesiac_hat import AmnesiacHAT
from clrepro.algorithms.buffer import Replay
from clrepro.backbones.masks import parameter_wise
from clrepro.config.hparams import build
from clrepro.data.task import Split, Task
from clrepro.engine import loop
from clrepro.engine.loop import Engine
from clrepro.errors import ConfigError
from clrepro.registry import BACKBONES


pytestmark = pytest.mark.usefixtures("one_thread")


def make(tiny, *overrides: str, tasks: int = 3, unlearning: bool = True) -> Engine:
    engine = Engine(tiny("hat_pmnist", "algorithm=amnesiac_hat", f"benchmark.num_tasks={tasks}", "trainer.epochs=1",
                         *overrides))
    if unlearning:
        engine.algorithm.enable_unlearning()
    return engine


def learn(engine: Engine, t: int, unlearned=(), age: int = 4, before_fit=None) -> None:
    """Task t as the engine runs it in an unlearning run (docs/unlearning.md steps 3-5, then end_task)."""
    algo = engine.algorithm
    task = engine._task(t)
    algo.unlearnable_ids = [k for k in range(1, t + 1) if t - k < age and k not in unlearned]
    algo.unlearned_ids = list(unlearned)
    algo.setup_task(task, engine._num_batches(len(task.train)))
    algo.to(engine.device)
    if before_fit is not None:
        before_fit(algo)
    engine.fit(task.train.x, engine._targets(task.train.y, t), t, t, [task])
    algo.end_task(task)


def snapshot(module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def unit_mask(algo, **on) -> dict[str, torch.Tensor]:
    out = {l: torch.zeros(n) for l, n in algo.masks.layer_units.items()}
    for layer, units in on.items():
        out[layer][list(units)] = 1.0
    return out


def dummy_task(t: int) -> Task:
    x = torch.zeros(4, 1, 8, 8)
    split = Split(x, torch.zeros(4, dtype=torch.long))
    return Task(t, 10, split, split, split)


# ----- construction ------------------------------------------------------------------------------------
def test_rejects_other_backbones_and_foreign_adjustment_modes(tiny):
    cls = BACKBONES.get("hat_resnet18")
    with torch.device("meta"):  # shapes only: ResNet-18's initialisation is slow on a busy CPU
        resnet = cls((3, 32, 32), build(cls.Config, {}, "backbone"))
    engine = make(tiny, unlearning=False)
    with pytest.raises(ConfigError, match="supports the HAT MLP") as e:
        AmnesiacHAT(resnet, engine.algorithm.heads, engine.algorithm.cfg, 3)
    assert e.value.key == "backbone.name" and e.value.allowed == "hat_mlp"
    with pytest.raises(ConfigError, match="not a rule of architecture AdaHAT"):
        make(tiny, "algorithm.adjustment_mode=hat", unlearning=False)
    assert make(tiny, "algorithm.architecture=HAT", "algorithm.adjustment_mode=hat", unlearning=False)


# ----- learning ----------------------------------------------------------------------------------------
def test_backup_forward_routes_the_backup_units(tiny):
    algo = make(tiny, unlearning=False).algorithm
    bb = algo.backbone
    backup = bb.plain_copy()
    with torch.no_grad():
        for p in backup.parameters():
            p.add_(torch.randn_like(p))
    Mu = unit_mask(algo, fc1=range(0, 40, 3), fc2=range(5, 20))
    m = {l: torch.rand(n) for l, n in algo.masks.layer_units.items()}
    x = torch.randn(6, 1, 8, 8)
    h = x.flatten(1)
    for i, l in enumerate(("fc1", "fc2")):  # y = M^u ⊙ B^u_l(h) + (1 − M^u) ⊙ main_l(h), ⊙ m, ReLU
        own = h @ backup.body.fc[i].weight.T + backup.body.fc[i].bias
        main = h @ bb.body.fc[i].weight.T + bb.body.fc[i].bias
        h = torch.relu((Mu[l] * own + (1 - Mu[l]) * main) * m[l])
    assert torch.allclose(bb.forward_with_backup(x, backup, Mu, m), h, atol=1e-5)
    assert torch.allclose(bb.forward_with_backup(x, backup, unit_mask(algo), m), bb(x, m))  # M^u = 0: the main net


def test_replay_term_equals_the_reference_per_sample_forward(tiny):
    algo = make(tiny, "algorithm.distillation_reg_factor=0.3", "algorithm.replay_ce_factor=0.7",
                unlearning=False).algorithm
    for t in (1, 2):
        algo.heads.add_task(t, 10)
        algo.masks.store(t, {l: (torch.rand(n) > 0.5).float() for l, n in algo.masks.layer_units.items()})
    algo.setup_task(dummy_task(3), 1)
    n = 9
    replay = Replay(torch.randn(n, 1, 8, 8), torch.randint(10, (n,)), torch.randn(n, 10),
                    torch.tensor([1, 2, 2, 1, 1, 2, 1, 2, 2]), torch.arange(n))
    mse, ce = [], []
    for i in range(n):  # the reference: one sample at a time, stage "test", its own mask and head
        z = algo(replay.x[i:i + 1], int(replay.task_id[i]), "test")
        mse.append(((z - replay.logits[i:i + 1]) ** 2).mean())
        ce.append(F.cross_entropy(z, replay.y[i:i + 1]))
    expected = 0.3 * torch.stack(mse).mean() + 0.7 * torch.stack(ce).mean()
    assert algo.replay_loss(replay).item() == pytest.approx(expected.item(), rel=1e-5)


# ----- 1. update deletion ------------------------------------------------------------------------------
def test_deleting_an_update_restores_what_later_tasks_left_alone(tiny):
    # HAT protection: Δθ^3 is exactly zero where tasks 1 and 2 own both ends; compensation and repair off
    engine = make(tiny, "algorithm.architecture=HAT", "algorithm.adjustment_mode=hat",
                  "algorithm.backup_init_mode=before", "algorithm.if_backup_compensation=false",
                  "algorithm.if_replay_repairing=false")
    algo, bb = engine.algorithm, engine.algorithm.backbone
    theta0 = snapshot(bb)
    learn(engine, 1)
    theta1 = snapshot(bb)
    learn(engine, 2)
    theta2 = snapshot(bb)
    backups = {}
    learn(engine, 3, before_fit=lambda a: backups.update({u: snapshot(b) for u, b in a.backups.items()}))
    theta3 = snapshot(bb)
    # backups "before": B^u = θ_0 + Σ_{τ<u} Δθ^τ, i.e. the weights just before u was learned
    assert sorted(backups) == ["1", "2"]
    for name in backups["1"]:
        assert torch.equal(backups["1"][name], theta0[name])
        assert torch.allclose(backups["2"][name], theta1[name], atol=1e-6)
    d2, d3 = algo.records.delta(2), algo.records.delta(3)
    assert algo.records.stored_numel(3) < 0.9 * algo.records.dense_numel(3)  # stored sparsely, and losslessly:
    for mp in bb.masked_parameters():
        assert torch.equal(d3[f"backbone.{mp.name}"], theta3[mp.name] - theta2[mp.name])

    algo.unlearn([2])
    after = snapshot(bb)
    restored = 0
    for mp in bb.masked_parameters():
        n, delta2, delta3 = mp.name, d2[f"backbone.{mp.name}"], d3[f"backbone.{mp.name}"]
        assert torch.equal(after[n], theta3[n] - delta2)  # θ ← θ − Δθ^2 everywhere
        untouched = delta3 == 0  # entries task 3 never moved
        assert torch.allclose(after[n][untouched], theta1[n][untouched], atol=1e-6)  # their value before task 2
        restored += int((untouched & (delta2 != 0)).sum())
    assert restored > 500
    assert 2 not in algo.records.records and sorted(algo.records.records) == [1, 3]


# ----- 2. backup compensation --------------------------------------------------------------------------
def test_backup_compensation_replaces_exactly_the_overlap(tiny):
    algo = make(tiny, unlearning=False).algorithm
    bb = algo.backbone
    W1, b1, W2, b2 = "body.fc.0.weight", "body.fc.0.bias", "body.fc.1.weight", "body.fc.1.bias"
    algo.masks.store(1, unit_mask(algo, fc1=[0, 1, 2, 3], fc2=[0, 1, 2]))  # u
    algo.masks.store(2, unit_mask(algo, fc1=[2, 3, 4], fc2=[1, 2, 5]))  # P = M^2 ∩ M^1: fc1 {2, 3}, fc2 {1, 2}
    algo.masks.store(3, unit_mask(algo, fc1=[3, 5], fc2=[2, 7]))  # P = M^3 ∩ M^1: fc1 {3}, fc2 {2}
    before = snapshot(bb)
    B2 = {n: torch.randn_like(v) for n, v in before.items()}
    B3 = {n: torch.randn_like(v) for n, v in before.items()}
    algo.backup_states = {(1, 2): B2, (1, 3): B3}

    algo.compensate([1], [2, 3])  # ascending: τ = 3 overwrites τ = 2
    exp = {n: v.clone() for n, v in before.items()}
    exp[W1][[2, 3]] = B2[W1][[2, 3]]  # first layer: whole rows of P_1
    exp[b1][[2, 3]] = B2[b1][[2, 3]]
    exp[W2][1, 2], exp[W2][1, 3], exp[W2][2, 2], exp[W2][2, 3] = B2[W2][1, 2], B2[W2][1, 3], B2[W2][2, 2], B2[W2][2, 3]
    exp[b2][[1, 2]] = B2[b2][[1, 2]]
    exp[W1][3], exp[b1][3], exp[W2][2, 3], exp[b2][2] = B3[W1][3], B3[b1][3], B3[W2][2, 3], B3[b2][2]
    after = snapshot(bb)
    for n in exp:
        assert torch.equal(after[n], exp[n]), n
    assert int(sum((after[n] != before[n]).sum() for n in exp)) == 2 * 64 + 2 + 4 + 2

    with torch.no_grad():  # reverse: τ = 2 wins the overlap
        for n, p in bb.named_parameters():
            p.copy_(before[n])
    algo.cfg.compensate_order = "reverse"
    algo.compensate([1], [2, 3])
    assert torch.equal(bb.body.fc[0].weight[3], B2[W1][3]) and bb.body.fc[1].weight[2, 3] == B2[W2][2, 3]


@pytest.mark.parametrize("fix", [False, True])
def test_compensation_uses_only_the_first_unlearned_task_b13(tiny, fix):
    algo = make(tiny, "algorithm.if_replay_repairing=false", f"algorithm.compensate_every_unlearned={fix}").algorithm
    bb = algo.backbone
    algo.masks.store(1, unit_mask(algo, fc1=[0, 1], fc2=[0]))
    algo.masks.store(2, unit_mask(algo, fc1=[5, 6], fc2=[4]))
    algo.masks.store(3, unit_mask(algo, fc1=[0, 1, 5, 6], fc2=[0, 4]))
    algo.task_id = 3
    before = snapshot(bb)
    algo.backup_states = {(u, 3): {n: torch.full_like(v, float(u)) for n, v in before.items()} for u in (1, 2)}
    algo.unlearn([1, 2])  # A = {3}; no records, no buffer: only compensation acts
    fc1 = bb.body.fc[0].weight
    assert (fc1[[0, 1]] == 1.0).all()  # from B^{1→3}
    assert torch.equal(fc1[[5, 6]], torch.full_like(fc1[[5, 6]], 2.0) if fix else before["body.fc.0.weight"][[5, 6]])
    assert torch.equal(fc1[[2, 3, 4]], before["body.fc.0.weight"][[2, 3, 4]])
    assert algo.backup_states == {}


# ----- 3. replay repairing and B14 --------------------------------------------------------------------
def test_replay_repairing_draws_affected_tasks_and_respects_the_gradient_mask(tiny, monkeypatch):
    made, real = [], loop.build_optimizer

    def capture(cfg, params):  # keep the engine's optimizer to compare with the mirrored state
        made.append(real(cfg, params))
        return made[-1]

    monkeypatch.setattr(loop, "build_optimizer", capture)
    engine = make(tiny, "algorithm.if_backup_compensation=false", "algorithm.repair_batch_size=64",
                  "algorithm.repair_num_steps=20")
    for t in (1, 2):
        learn(engine, t)
    theta2, backups = snapshot(engine.algorithm.backbone), {}
    learn(engine, 3, before_fit=lambda a: backups.update({u: snapshot(b) for u, b in a.backups.items()}))
    ref = engine.algorithm
    for u in (1, 2):  # backups "delete" (paper config): B^u = θ − Δθ^u at task 3's start
        delta = ref.records.delta(u)
        for name, value in backups[str(u)].items():
            assert torch.equal(value, theta2[name] - delta[f"backbone.{name}"])

    # B14 emulation: the mirrored state is the engine optimizer's own state after task 3
    state = made[-1].state
    alive = [p for p in ref.parameters() if p in state]
    assert alive and set(map(id, alive)) == set(map(id, ref._shadow))
    for p in alive:
        assert float(ref._shadow[p]["step"]) == float(state[p]["step"])
        assert torch.allclose(ref._shadow[p]["exp_avg"], state[p]["exp_avg"], rtol=1e-5, atol=1e-9)
        assert torch.allclose(ref._shadow[p]["exp_avg_sq"], state[p]["exp_avg_sq"], rtol=1e-5, atol=1e-12)

    fix = copy.deepcopy(ref)
    fix.cfg = dataclasses.replace(ref.cfg, fresh_repair_optimizer=True)
    moved_outside = {}
    for name, algo in (("reference", ref), ("fix", fix)):
        assert (algo.buffer.task_id[:algo.buffer.size] == 1).any()  # task 1 stays in the buffer, never drawn
        drawn, seen = [], {}
        sample = algo.buffer.sample

        def spy(size, task_ids=None, sample=sample, drawn=drawn):
            out = sample(size, task_ids)
            drawn.append((list(task_ids), out.task_id.unique().tolist()))
            return out

        algo.buffer.sample = spy
        repair = algo.repair

        def at_repair(unlearned, affected, repair=repair, algo=algo):
            seen.update(params=snapshot(algo.backbone), heads=snapshot(algo.heads), affected=list(affected))
            repair(unlearned, affected)

        algo.repair = at_repair
        algo.unlearn([2])
        assert seen["affected"] == [3]
        assert len(drawn) == 20 and all(ids == [3] and got == [3] for ids, got in drawn)

        M2, M3 = algo.masks.task_masks[2], algo.masks.task_masks[3]
        params = list(algo.backbone.masked_parameters())
        gate = parameter_wise(params, {l: M2[l] * M3[l] for l in M2}, "min")  # K ∩ M^3
        after, heads = snapshot(algo.backbone), snapshot(algo.heads)
        outside = inside = 0
        for mp in params:
            changed = after[mp.name] != seen["params"][mp.name]
            outside += int((changed & (gate[mp.name] == 0)).sum())
            inside += int((changed & (gate[mp.name] == 1)).sum())
        assert inside > 0
        moved_outside[name] = outside
        assert heads["heads.3.weight"].ne(seen["heads"]["heads.3.weight"]).any()  # heads are not masked
        for k in ("heads.1.weight", "heads.2.weight"):  # not in any repair batch: no gradient, no step
            assert torch.equal(heads[k], seen["heads"][k])
    assert moved_outside["fix"] == 0
    assert moved_outside["reference"] > 100  # Adam's carried-over moments move "frozen" entries (B14)


# ----- B12 ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fix", [False, True])
def test_unlearned_units_stay_protected_one_task_and_counted_forever_b12(tiny, fix):
    algo = make(tiny, f"algorithm.release_unlearned_masks={fix}", "algorithm.if_replay_repairing=false").algorithm
    bias = algo.backbone.body.fc[0].bias
    algo.masks.store(1, unit_mask(algo, fc1=[0, 1, 2, 3], fc2=[0]))
    algo.masks.store(2, unit_mask(algo, fc1=[4, 5], fc2=[1]))
    algo.task_id = 2
    algo.unlearn([1])

    def setup(t):
        algo.setup_task(dummy_task(t), 1)
        S = next(S for p, _, S in algo._S if p is bias)
        return algo.used["fc1"][:6].tolist(), S[:6].tolist()

    used, S = setup(3)
    assert used == ([0, 0, 0, 0, 1, 1] if fix else [1, 1, 1, 1, 1, 1])  # task 3 still protects task 1's units
    assert S == ([0, 0, 0, 0, 1, 1] if fix else [1, 1, 1, 1, 1, 1])
    algo.end_task(dummy_task(3))
    algo.masks.store(3, unit_mask(algo, fc1=[5], fc2=[2]))
    used, S = setup(4)
    assert used == [0, 0, 0, 0, 1, 1]  # released at task 3's end at the latest
    assert S == ([0, 0, 0, 0, 1, 2] if fix else [1, 1, 1, 1, 1, 2])  # the reference keeps counting task 1


# ----- 4. end to end -----------------------------------------------------------------------------------
def test_unlearning_run_forgets_the_requested_tasks(tiny):
    engine = make(tiny, tasks=4)
    algo, requests, unlearned, rows = engine.algorithm, {2: [1], 4: [2]}, [], {}
    for t in range(1, 5):
        learn(engine, t, unlearned)
        rows[t, "before"] = engine.evaluate(range(1, t + 1))[0]
        if t in requests:
            algo.unlearn(requests[t])
            unlearned += requests[t]
            algo.unlearned_ids = list(unlearned)
        rows[t] = engine.evaluate(range(1, t + 1))[0]
    assert all(math.isfinite(a) for row in rows.values() for a in row)
    assert rows[2, "before"][0] > 0.6 and rows[2][0] < 0.25  # task 1 falls to chance (10 classes)
    assert rows[4, "before"][1] > 0.6 and rows[4][1] < 0.25  # task 2 too
    assert min(rows[4][2:]) > 0.6  # the remaining tasks keep working
    extras = algo.extra_metrics()
    assert 0 < extras["records/stored_fraction"] <= 1 and extras["buffer/size"] > 0
    assert sorted(algo.records.records) == [3, 4] and all(u not in (1, 2) for u, _ in algo.backup_states)


def test_plain_cl_run_trains_without_records_or_backups(tiny):
    engine = make(tiny, unlearning=False)
    result = engine.run()
    algo = engine.algorithm
    assert algo.records is None and algo.backup_states == {} and len(algo.backups) == 0
    assert len(algo.buffer) == 200 and result.acc[-1, -1] > 0.6
