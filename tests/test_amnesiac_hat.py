"""AmnesiacHAT: update deletion, backups and compensation, replay repairing (B14), stale masks (B12), end to end."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clrepro.algorithms.amnesiac_hat import AmnesiacHAT
from clrepro.algorithms.buffer import Replay
from clrepro.backbones.masks import parameter_wise
from clrepro.config.hparams import build
from clrepro.config.load import load_experiment
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
@pytest.mark.parametrize("name", ["resnet18", "mlp"])
def test_rejects_backbones_without_backups_and_foreign_adjustment_modes(tiny, name):
    cls = BACKBONES.get(name)
    with torch.device("meta"):  # shapes only: ResNet-18's initialisation is slow on a busy CPU
        plain = cls((3, 32, 32), build(cls.Config, {}, "backbone"))
    engine = make(tiny, unlearning=False)
    with pytest.raises(ConfigError, match=f"needs a HAT-masked backbone with backups; '{name}' has none") as e:
        AmnesiacHAT(plain, engine.algorithm.heads, engine.algorithm.cfg, 3)
    assert e.value.key == "backbone.name" and e.value.allowed == "hat_mlp, hat_resnet18"
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"backbone.name: .*\(allowed: hat_mlp, hat_resnet18\)$"):  # at load time
        load_experiment("hat_pmnist", ["benchmark=pdigits", "algorithm=amnesiac_hat", f"backbone={name}"])
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


# ----- ResNet-18 (hat_resnet18): the same guarantees on conv weights, BN and the 1x1 shortcuts -------------
# A narrow ResNet-18 (every stage width differs, so a transposed (out, in) index fails) on 1x8x8 digits: the same
# 17 masked convs and the three downsampling 1x1 shortcuts (conv3x.0, conv4x.0, conv5x.0) as the paper's net.
WIDTHS = (12, 16, 24, 32)
RESNET = ["benchmark=split_digits", "backbone=hat_resnet18", "trainer.epochs=1", "trainer.batch_size=32",
          "metrics=[AA,BWT]"]
SHORTCUT_BLOCKS = ("conv3x.0", "conv4x.0", "conv5x.0")


@pytest.fixture
def narrow(monkeypatch):
    from clrepro.backbones import resnet

    monkeypatch.setattr(resnet, "STAGE_CHANNELS", WIDTHS)


def make_resnet(*overrides: str, tasks: int = 3, unlearning: bool = True) -> Engine:
    engine = Engine(load_experiment("hat_pmnist", ["algorithm=amnesiac_hat", f"benchmark.num_tasks={tasks}", *RESNET,
                                                   *overrides]))
    if unlearning:
        engine.algorithm.enable_unlearning()
    return engine


def float_state(module) -> dict[str, torch.Tensor]:
    """Parameters and floating buffers (BN running statistics): everything an update record covers."""
    return {k: v.detach().clone() for k, v in module.state_dict().items() if v.is_floating_point()}


def resnet_convs(body) -> list[tuple[str, str, str | None]]:
    """(parameter, layer owning its output channels, layer owning its input channels) of every conv, shortcuts
    included, written from the architecture (not from `masked_parameters`)."""
    out, prev = [("body.conv1.weight", "conv1", None)], "conv1"
    for name, block in body.blocks():
        out += [(f"body.{name}.conv1.weight", f"{name}.conv1", prev), (f"body.{name}.conv2.weight", f"{name}.conv2",
                                                                        f"{name}.conv1")]
        if block.shortcut is not None:
            out.append((f"body.{name}.shortcut.weight", f"{name}.conv2", prev))
        prev = f"{name}.conv2"
    return out


def random_masks(algo, p: float = 0.5) -> dict[str, torch.Tensor]:
    return {l: (torch.rand(n) < p).float() for l, n in algo.masks.layer_units.items()}


def test_resnet_is_accepted_in_both_shortcut_modes(narrow):
    for protect in (False, True):
        algo = make_resnet(f"backbone.protect_shortcuts={str(protect).lower()}", unlearning=False).algorithm
        assert AmnesiacHAT.has_backups(type(algo.backbone)) and algo.backbone.output_dim == WIDTHS[-1]
        shortcuts = {mp.name for mp in algo.backbone.masked_parameters() if mp.shortcut}
        assert shortcuts == ({f"body.{b}.shortcut.weight" for b in SHORTCUT_BLOCKS} if protect else set())
        twin = algo.backbone.plain_copy()  # the backup: every weight, BN and shortcut of the main net, unmasked
        assert not twin.masked and twin.training == algo.backbone.training
        main = algo.backbone.body.state_dict()
        assert set(twin.body.state_dict()) == set(main)
        assert all(torch.equal(v, main[k]) for k, v in twin.body.state_dict().items())


@pytest.mark.parametrize("batch_norm", [False, True])
def test_resnet_backup_forward_routes_the_backup_channels_and_shortcuts(narrow, batch_norm):
    torch.manual_seed(0)
    algo = make_resnet(f"backbone.batch_norm={str(batch_norm).lower()}", unlearning=False).algorithm
    bb = algo.backbone.eval()  # BN on running statistics: the same normalisation in every forward below
    backup = bb.plain_copy().eval()
    with torch.no_grad():
        for b in (bb, backup):  # random BN statistics, so that BN is not the identity
            for m in b.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.normal_()
                    m.running_var.uniform_(0.5, 2.0)
        for p in backup.parameters():
            p.add_(torch.randn_like(p))
    x = torch.randn(5, 1, 8, 8)
    m = {l: torch.rand(n) for l, n in algo.masks.layer_units.items()}
    zeros, ones = unit_mask(algo), {l: torch.ones(n) for l, n in algo.masks.layer_units.items()}
    with torch.no_grad():
        assert torch.equal(bb.forward_with_backup(x, backup, zeros, m), bb(x, m))  # M^u = 0: the main net
        assert torch.equal(bb.forward_with_backup(x, backup, ones, None), backup(x))  # M^u = 1: the backup net
        twin = copy.deepcopy(bb)  # M^u = 1 under a training mask: the masked net with the backup's weights
        twin.body.load_state_dict(backup.body.state_dict())
        assert torch.equal(bb.forward_with_backup(x, backup, ones, m), twin(x, m))

        # mixed M^u, against a hand-written forward: y = M^u ⊙ B^u_l(h) + (1 − M^u) ⊙ main_l(h) per conv → [BN];
        # a 1x1 shortcut mixes with its block's conv2 M^u on the block input
        Mu = random_masks(algo)

        def layer(conv, bn, h):
            y = F.conv2d(h, conv.weight, None, conv.stride, conv.padding)
            return y if bn is None else F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, False,
                                                     0.0, bn.eps)

        def mix(l, own, main):
            k = Mu[l].view(1, -1, 1, 1)
            return k * own + (1 - k) * main

        b, bk = bb.body, backup.body
        h = torch.relu(mix("conv1", layer(bk.conv1, bk.bn1, x), layer(b.conv1, b.bn1, x)) * m["conv1"].view(1, -1, 1, 1))
        h = F.max_pool2d(h, 3, 2, 1)
        for (name, blk), (_, twin_blk) in zip(b.blocks(), bk.blocks()):
            l1, l2 = f"{name}.conv1", f"{name}.conv2"
            a = mix(l1, layer(twin_blk.conv1, twin_blk.bn1, h), layer(blk.conv1, blk.bn1, h))
            a = torch.relu(a * m[l1].view(1, -1, 1, 1))
            c = mix(l2, layer(twin_blk.conv2, twin_blk.bn2, a), layer(blk.conv2, blk.bn2, a))
            sc = h if blk.shortcut is None else mix(l2, layer(twin_blk.shortcut, None, h), layer(blk.shortcut, None, h))
            h = torch.relu((c + sc) * m[l2].view(1, -1, 1, 1))
        expected = h.mean((2, 3))
        assert torch.allclose(bb.forward_with_backup(x, backup, Mu, m), expected, atol=1e-5)

        # the shortcut is routed by conv2's M^u: B^u's shortcut changes the output only through u's channels
        with torch.no_grad():
            for name in SHORTCUT_BLOCKS:
                twin_sc = dict(bk.blocks())[name].shortcut
                twin_sc.weight.copy_(dict(b.blocks())[name].shortcut.weight)
        only_shortcuts = bb.forward_with_backup(x, backup, Mu, m)
        assert not torch.allclose(only_shortcuts, expected, atol=1e-5)  # the backup's shortcuts were in use


def test_resnet_replay_masks_each_sample_with_its_own_task(narrow):
    algo = make_resnet(unlearning=False).algorithm
    for t in (1, 2):
        algo.heads.add_task(t, 2)
        algo.masks.store(t, random_masks(algo))
    algo.setup_task(dummy_task(3), 1)
    n = 6
    replay = Replay(torch.randn(n, 1, 8, 8), torch.randint(2, (n,)), torch.randn(n, 2),
                    torch.tensor([1, 2, 2, 1, 1, 2]), torch.arange(n))
    mse, ce = [], []
    for i in range(n):  # one sample at a time through its task's stored mask and head
        z = algo(replay.x[i:i + 1], int(replay.task_id[i]), "test")
        mse.append(((z - replay.logits[i:i + 1]) ** 2).mean())
        ce.append(F.cross_entropy(z, replay.y[i:i + 1]))
    expected = 0.5 * torch.stack(mse).mean() + 0.5 * torch.stack(ce).mean()
    assert algo.replay_loss(replay).item() == pytest.approx(expected.item(), rel=1e-5)


def test_resnet_owned_records_are_lossless_on_conv_weights():
    from clrepro.algorithms.records import OwnedUpdate, UpdateRecords

    delta = torch.zeros(6, 5, 3, 3)
    rows, cols = torch.tensor([1, 4]), torch.tensor([0, 2, 3])
    delta[rows[:, None], cols] = torch.randn(2, 3, 3, 3)  # the whole kernel of owned (out, in) pairs
    delta[5, 1, 2, 0] = 0.25  # and one stray entry
    kept = UpdateRecords._smallest(delta, (rows, cols))
    assert isinstance(kept, OwnedUpdate) and kept.block.shape == (2, 3, 3, 3)
    assert torch.equal(kept.dense(), delta) and kept.residual._nnz() == 1


@pytest.mark.parametrize("protect, batch_norm", [(False, False), (True, True)])
def test_resnet_deleting_an_update_restores_what_later_tasks_left_alone(narrow, protect, batch_norm):
    # HAT protection: Δθ^3 is exactly zero on conv entries whose output and input channels tasks 1-2 own
    engine = make_resnet(f"backbone.protect_shortcuts={str(protect).lower()}",
                         f"backbone.batch_norm={str(batch_norm).lower()}", "algorithm.architecture=HAT",
                         "algorithm.adjustment_mode=hat", "algorithm.backup_init_mode=before",
                         "algorithm.if_backup_compensation=false", "algorithm.if_replay_repairing=false")
    algo, bb = engine.algorithm, engine.algorithm.backbone
    theta0 = float_state(bb)
    learn(engine, 1)
    theta1 = float_state(bb)
    learn(engine, 2)
    theta2, backups = float_state(bb), {}
    learn(engine, 3, before_fit=lambda a: backups.update({u: float_state(b) for u, b in a.backups.items()}))
    theta3 = float_state(bb)
    assert sorted(backups) == ["1", "2"]  # "before": B^1 = θ_0, B^2 = θ_1, BN statistics included
    for name, v in backups["1"].items():
        assert torch.equal(v, theta0[name]) and torch.allclose(backups["2"][name], theta1[name], atol=1e-6), name
    d2, d3 = algo.records.delta(2), algo.records.delta(3)
    assert algo.records.stored_numel(3) < 0.9 * algo.records.dense_numel(3)  # stored compactly, and losslessly:
    body = [k for k in theta3 if k.startswith("body.")]  # (the task embeddings are re-drawn at each task start)
    for k in body:
        assert torch.equal(d3[f"backbone.{k}"], theta3[k] - theta2[k]), k

    algo.unlearn([2])
    after = float_state(bb)
    restored, per_shortcut = 0, {}
    for k in body:  # every conv, shortcut, BN parameter and statistic
        delta2, delta3 = d2[f"backbone.{k}"], d3[f"backbone.{k}"]
        assert torch.equal(after[k], theta3[k] - delta2), k  # θ ← θ − Δθ^2 everywhere
        untouched = delta3 == 0  # entries task 3 never moved
        assert torch.allclose(after[k][untouched], theta1[k][untouched], atol=1e-6), k  # back to before task 2
        n = int((untouched & (delta2 != 0)).sum())
        restored += n
        if ".shortcut." in k:
            per_shortcut[k] = n
    assert restored > 500
    assert len(per_shortcut) == 3
    if protect:  # protected shortcuts keep tasks 1-2's (out, in) pairs: those come back exactly
        assert all(n > 0 for n in per_shortcut.values()), per_shortcut
    assert 2 not in algo.records.records and sorted(algo.records.records) == [1, 3]


@pytest.mark.parametrize("protect", [False, True])
def test_resnet_compensation_replaces_exactly_the_overlap(narrow, protect):
    torch.manual_seed(0)
    algo = make_resnet(f"backbone.protect_shortcuts={str(protect).lower()}", "backbone.batch_norm=true",
                       unlearning=False).algorithm
    bb = algo.backbone
    for t in (1, 2, 3):  # u = 1; affected 2 and 3
        algo.masks.store(t, random_masks(algo))
    M = algo.masks.task_masks
    before = float_state(bb)
    B = {tau: {k: torch.randn_like(v) for k, v in bb.plain_copy().state_dict().items() if v.is_floating_point()}
         for tau in (2, 3)}
    algo.backup_states = {(1, tau): B[tau] for tau in (2, 3)}

    algo.compensate([1], [2, 3])  # ascending: τ = 3 overwrites τ = 2
    exp = {k: v.clone() for k, v in before.items()}
    convs = [c for c in resnet_convs(bb.body) if protect or ".shortcut." not in c[0]]
    for tau in (2, 3):
        P = {l: (M[tau][l] * M[1][l]).nonzero(as_tuple=True)[0] for l in M[1]}
        for name, layer, prev in convs:
            rows = P[layer]
            if prev is None:  # the stem: whole rows (every input channel, every kernel entry)
                exp[name][rows] = B[tau][name][rows]
            else:  # (out, in) pairs with both channels in P, the whole kernel
                exp[name][rows[:, None], P[prev]] = B[tau][name][rows[:, None], P[prev]]
    after = float_state(bb)
    for k in exp:  # BN, the unprotected shortcuts and the embeddings stay as they were
        assert torch.equal(after[k], exp[k]), k
    changed = {k: int((after[k] != before[k]).sum()) for k in exp}
    assert sum(changed.values()) > 1000
    assert all(n == 0 for k, n in changed.items() if ".bn" in k or k.startswith("hat."))
    shortcuts = [changed[f"body.{b}.shortcut.weight"] for b in SHORTCUT_BLOCKS]
    assert all(n > 0 for n in shortcuts) if protect else all(n == 0 for n in shortcuts)


@pytest.mark.parametrize("protect", [False, True])
def test_resnet_repair_moves_only_the_unlearned_units_of_the_replayed_task(narrow, protect):
    engine = make_resnet(f"backbone.protect_shortcuts={str(protect).lower()}", "algorithm.if_backup_compensation=false",
                         "algorithm.repair_batch_size=32", "algorithm.repair_num_steps=5",
                         "algorithm.fresh_repair_optimizer=true")
    for t in (1, 2, 3):
        learn(engine, t)
    algo, seen = engine.algorithm, {}
    repair = algo.repair

    def at_repair(unlearned, affected):
        seen.update(params=float_state(algo.backbone), affected=list(affected))
        repair(unlearned, affected)

    algo.repair = at_repair
    algo.unlearn([2])
    assert seen["affected"] == [3]
    M2, M3 = algo.masks.task_masks[2], algo.masks.task_masks[3]
    gate = parameter_wise(algo.backbone.masked_parameters(), {l: M2[l] * M3[l] for l in M2}, "min")  # K ∩ M^3
    after = float_state(algo.backbone)
    inside = 0
    for mp in algo.backbone.masked_parameters():
        changed = after[mp.name] != seen["params"][mp.name]
        assert not (changed & (gate[mp.name] == 0)).any(), mp.name  # held exactly outside K ∩ M^3
        inside += int((changed & (gate[mp.name] == 1)).sum())
    assert inside > 0
    sc = "body.conv4x.0.shortcut.weight"
    if not protect:  # an unprotected shortcut is no masked parameter: repair does not gate it (B9, reference)
        assert (after[sc] != seen["params"][sc]).any()


def test_resnet_unlearning_run_completes(narrow, monkeypatch):
    """Through the engine: task 1 unlearned after task 2 (deletion, compensation from B^{1→2}, repair on task 2),
    task 3 right after training it (deletion only)."""
    calls = []
    for step in ("compensate", "repair"):
        real = getattr(AmnesiacHAT, step)
        monkeypatch.setattr(AmnesiacHAT, step, lambda self, U, A, real=real, step=step: (calls.append((step, U, A)),
                                                                                     real(self, U, A)))
    cfg = load_experiment("unlearning/amnesiac_hat_smnist5", [
        *RESNET, "benchmark.num_tasks=3", "~unlearning.requests", "+unlearning.requests={2:[1],3:[3]}",
        "algorithm.buffer_size=60", "algorithm.repair_batch_size=32", "algorithm.repair_num_steps=5"])
    engine = Engine(cfg)
    result = engine.run()
    algo = engine.algorithm
    assert type(algo.backbone).__name__ == "HATMaskResNet18" and engine.unlearned == [1, 3]
    # (a narrow ResNet-18 on 290 8x8 digits per task learns erratically, even under Finetuning: no accuracy bar)
    assert all(math.isfinite(a) for a in result.acc[np.tril_indices(3)])
    assert sorted(algo.records.records) == [2] and all(u not in (1, 3) for u, _ in algo.backup_states)
    assert [h["unlearned"] for h in engine.history if h.get("phase") == "unlearn"] == [[1], [3]]
    assert calls == [("compensate", [1], [2]), ("repair", [1], [2]), ("compensate", [3], []), ("repair", [3], [])]
