"""LwF, DER and DER++: reservoir statistics, buffer deletion, the losses against hand computations, tiny runs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clrepro.algorithms.base import Batch, Step
from clrepro.algorithms.buffer import ReservoirBuffer
from clrepro.algorithms.der import DER, DERConfig, DERpp, DERppConfig
from clrepro.algorithms.lwf import LwF, LwFConfig, lwf_distillation
from clrepro.backbones.heads import Heads
from clrepro.backbones.mlp import MLP, MLPConfig
from clrepro.data.task import Split, Task
from clrepro.engine.loop import run

STEP = Step(task_id=1, epoch=0, batch_idx=0, num_batches=1, global_step=0)


def make(cls, cfg, scenario="TIL", dropout=0.0):
    """An algorithm on a 4-input MLP with one hidden layer of 5 units."""
    torch.manual_seed(0)
    backbone = MLP((4,), MLPConfig(hidden=[5], dropout=dropout))
    return cls(backbone, Heads(scenario, backbone.output_dim), cfg, num_tasks=3)


def task(t, classes=2):
    empty = Split(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    return Task(t, classes, empty, empty, empty)


def spy_samples(monkeypatch, buffer):
    """Record every replay batch the buffer hands out (the real sampler still draws it)."""
    drawn, real = [], buffer.sample

    def sample(size, task_ids=None):
        out = real(size, task_ids)
        drawn.append(out)
        return out

    monkeypatch.setattr(buffer, "sample", sample)
    return drawn


# ----- the reservoir buffer -----------------------------------------------------------------------

def test_reservoir_keeps_each_example_with_probability_k_over_n_and_its_logits():
    torch.manual_seed(0)
    reps, n, K = 2000, 100, 20
    sizes = [7, 20, 1, 30, 12, 30]  # the second batch crosses the capacity inside the batch
    assert sum(sizes) == n
    counts = torch.zeros(n)
    for _ in range(reps):
        buf, start = ReservoirBuffer(K), 0
        for b in sizes:
            idx = torch.arange(start, start + b)
            logits = torch.stack([idx * 1.0, -2.0 * idx + 1], 1)
            buf.add(idx[:, None].float(), idx, logits, 1 if start < 28 else 2)
            start += b
        kept = buf.y[: buf.size]
        assert buf.size == K and len(kept.unique()) == K  # no duplicates
        # every entry carries what was given with it at insertion
        assert torch.equal(buf.x[: K, 0].long(), kept)
        assert torch.equal(buf.logits[: K], torch.stack([kept * 1.0, -2.0 * kept + 1], 1))
        assert torch.equal(buf.task_id[: K], torch.where(kept < 28, 1, 2))
        counts[kept] += 1
    p = K / n
    expected, sd = reps * p, math.sqrt(reps * p * (1 - p))  # 400 ± 17.9
    assert (counts - expected).abs().max() < 5 * sd
    chi2 = float(((counts - expected) ** 2 / (reps * p * (1 - p))).sum())
    assert 50 < chi2 < 160  # ~χ²(99): neither a biased reservoir nor a fixed one
    # inclusion does not depend on arrival position: first 50 vs last 50 (sd of the half-sum ≈ 90)
    first, second = counts[:50].sum(), counts[50:].sum()
    assert first + second == reps * K
    assert abs(float(first - second)) < 2 * 5 * 90


def test_delete_task_removes_exactly_that_task_and_sample_filters_tasks():
    torch.manual_seed(0)
    buf = ReservoirBuffer(50)
    for t in (1, 2, 3):
        idx = torch.arange(10) + 100 * t
        buf.add(idx[:, None].float(), idx, idx[:, None].float().repeat(1, t + 1), t)
    buf.delete_task(2)
    assert len(buf) == 20
    kept = buf.y[: buf.size]
    assert sorted(kept.tolist()) == [*range(100, 110), *range(300, 310)]
    assert torch.equal(buf.task_id[: buf.size], kept // 100)
    assert torch.equal(buf.logits[: buf.size, 0], kept.float())  # rows stay with their entries
    only3 = buf.sample(64, [3])
    assert len(only3.y) == 10  # capped at the 10 matching entries, as the reference's get_data
    assert set(only3.task_id.tolist()) == {3} and set(only3.y.tolist()) <= set(range(300, 310))
    assert torch.equal(only3.y, buf.y[only3.index])
    both = buf.sample(2000 // 100, [1, 3])
    assert set(both.task_id.tolist()) <= {1, 3}
    assert buf.sample(8, [2]) is None
    # a full buffer: deletion of the most common task leaves only the others
    full = ReservoirBuffer(20)
    for t in (1, 2, 1, 3):
        full.add(torch.randn(15, 1), torch.zeros(15, dtype=torch.long), torch.zeros(15, 2), t)
    before = {t: int((full.task_id == t).sum()) for t in (1, 2, 3)}
    full.delete_task(1)
    assert len(full) == before[2] + before[3]
    assert sorted(full.task_id[: len(full)].tolist()) == [2] * before[2] + [3] * before[3]


# ----- DER / DER++ ----------------------------------------------------------------------------------

def fill(algo, t, n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    algo.buffer.add(x, torch.randint(0, 2, (n,), generator=g), torch.randn(n, 2, generator=g), t)


def test_der_has_no_replay_in_task_one_and_buffers_the_step_logits():
    algo = make(DER, DERConfig(buffer_size=50))
    algo.setup_task(task(1), 1)
    fill(algo, 1, 8, seed=1)  # task-1 entries exist, but they are not "earlier" tasks
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 1, 0, 1, 0])
    loss = algo.training_loss(Batch(x, y, 1), STEP)
    logits = algo.heads(algo.backbone(x), 1)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, y).item(), abs=1e-7)
    assert algo.stability_loss(Batch(x, y, 1), STEP).item() == 0.0
    algo.after_optimizer_step(STEP)
    assert len(algo.buffer) == 14
    assert torch.allclose(algo.buffer.logits[8:14], logits.detach())
    assert torch.equal(algo.buffer.x[8:14], x) and algo.buffer.task_id[8:14].tolist() == [1] * 6


@pytest.mark.parametrize("paper", [False, True])
def test_der_loss_is_ce_plus_alpha_mse_on_earlier_tasks(monkeypatch, paper):
    algo = make(DER, DERConfig(buffer_size=50, distillation_reg_factor=0.7, paper_variants=paper))
    for t in (1, 2):
        algo.setup_task(task(t), 1)
    fill(algo, 1, 10, seed=1)
    fill(algo, 2, 10, seed=2)  # current task: never replayed
    drawn = spy_samples(monkeypatch, algo.buffer)
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 1, 0, 1, 0])
    loss = algo.training_loss(Batch(x, y, 2), STEP)
    (r,) = drawn
    assert len(r.y) == 6 and set(r.task_id.tolist()) == {1}
    ce = F.cross_entropy(algo.heads(algo.backbone(x), 2), y)
    student = algo.heads(algo.backbone(r.x), 1)
    mse = ((student - r.logits) ** 2).sum(1).mean() if paper else F.mse_loss(student, r.logits)
    assert loss.item() == pytest.approx((ce + 0.7 * mse).item(), rel=1e-6)


def test_derpp_adds_beta_ce_on_the_same_replay_batch(monkeypatch):
    algo = make(DERpp, DERppConfig(buffer_size=50, distillation_reg_factor=0.3, replay_ce_factor=2.0))
    for t in (1, 2):
        algo.setup_task(task(t), 1)
    fill(algo, 1, 10, seed=1)
    drawn = spy_samples(monkeypatch, algo.buffer)
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 1, 0, 1])
    loss = algo.training_loss(Batch(x, y, 2), STEP)
    (r,) = drawn  # one replay batch for both terms (reference, A5)
    ce = F.cross_entropy(algo.heads(algo.backbone(x), 2), y)
    student = algo.heads(algo.backbone(r.x), 1)
    expected = ce + 0.3 * F.mse_loss(student, r.logits) + 2.0 * F.cross_entropy(student, r.y)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_derpp_paper_variant_draws_a_second_batch_for_the_ce(monkeypatch):
    algo = make(DERpp, DERppConfig(buffer_size=50, distillation_reg_factor=0.3, replay_ce_factor=2.0,
                                   paper_variants=True))
    for t in (1, 2):
        algo.setup_task(task(t), 1)
    fill(algo, 1, 10, seed=1)
    drawn = spy_samples(monkeypatch, algo.buffer)
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 1, 0, 1])
    stab = algo.stability_loss(Batch(x, y, 2), STEP)
    r1, r2 = drawn
    assert not torch.equal(r1.index, r2.index)
    s1, s2 = algo.heads(algo.backbone(r1.x), 1), algo.heads(algo.backbone(r2.x), 1)
    expected = 0.3 * ((s1 - r1.logits) ** 2).sum(1).mean() + 2.0 * F.cross_entropy(s2, r2.y)
    assert stab.item() == pytest.approx(expected.item(), rel=1e-6)


def test_der_cil_compares_each_sample_over_its_stored_width(monkeypatch):
    algo = make(DER, DERConfig(buffer_size=50), scenario="CIL")
    for t in (1, 2):  # store logits as the engine would: the CIL concatenation at that time (2, then 4 wide)
        algo.setup_task(task(t), 1)
        x = torch.randn(8, 4)
        algo.remember(Batch(x, torch.zeros(8, dtype=torch.long), t), algo(x, t) + 1.0)
        algo.after_optimizer_step(STEP)
    algo.setup_task(task(3), 1)  # the model now has 6 logits
    drawn = spy_samples(monkeypatch, algo.buffer)
    stab = algo.stability_loss(Batch(torch.randn(16, 4), torch.zeros(16, dtype=torch.long), 3), STEP)
    (r,) = drawn
    assert set(r.task_id.tolist()) == {1, 2}
    full = algo(r.x, 3)
    assert full.shape[1] == 6
    per = [F.mse_loss(full[i, : 2 * k], r.logits[i, : 2 * k]) for i, k in enumerate(r.task_id.tolist())]
    assert stab.item() == pytest.approx(torch.stack(per).mean().item(), rel=1e-6)
    assert stab.item() == pytest.approx(1.0, abs=0.3)  # the stored +1 offset, nothing from the zero padding


def test_der_student_runs_in_test_stage_and_keeps_train_mode(monkeypatch):
    algo = make(DER, DERConfig(buffer_size=50), dropout=0.5)
    for t in (1, 2):
        algo.setup_task(task(t), 1)
    fill(algo, 1, 10, seed=1)
    algo.train()
    drawn = spy_samples(monkeypatch, algo.buffer)
    stab = algo.stability_loss(Batch(torch.randn(4, 4), torch.zeros(4, dtype=torch.long), 2), STEP)
    assert algo.backbone.training
    algo.eval()
    expected = F.mse_loss(algo(drawn[0].x, 1), drawn[0].logits)  # dropout off: deterministic
    assert stab.item() == pytest.approx(expected.item(), rel=1e-6)


def test_der_forget_deletes_the_task_and_buffer_follows_the_module():
    algo = make(DER, DERConfig(buffer_size=50))
    for t in (1, 2, 3):
        algo.setup_task(task(t), 1)
        fill(algo, t, 5, seed=t)
    algo.forget([1, 3])
    assert algo.buffer.task_id[: len(algo.buffer)].tolist() == [2] * 5
    algo.to(torch.float64)
    assert algo.buffer.x.dtype == torch.float64 and algo.buffer.logits.dtype == torch.float64
    assert algo.buffer.y.dtype == torch.long


# ----- LwF ------------------------------------------------------------------------------------------

def test_lwf_distillation_matches_hand_values():
    s, t = torch.tensor([[0.0, 1.0], [2.0, 2.0]]), torch.tensor([[1.0, 0.0], [2.0, 2.0]])
    r = math.sqrt(math.e)  # softmax^{1/2}, renormalised, of (0, 1) is (1, √e)/(1 + √e)
    row1 = -((r / (1 + r)) * math.log(1 / (1 + r) + 1e-5) + (1 / (1 + r)) * math.log(r / (1 + r) + 1e-5))
    row2 = -math.log(0.5 + 1e-5)
    assert lwf_distillation(s, t, 2.0).item() == pytest.approx((row1 + row2) / 2, rel=1e-6)
    e = math.e  # T = 1: cross-entropy between the two softmaxes
    row1_t1 = -((e / (1 + e)) * math.log(1 / (1 + e) + 1e-5) + (1 / (1 + e)) * math.log(e / (1 + e) + 1e-5))
    assert lwf_distillation(s[:1], t[:1], 1.0).item() == pytest.approx(row1_t1, rel=1e-6)


def perturb(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g))


def test_lwf_sums_kd_over_teachers_and_old_heads_get_no_gradient():
    algo = make(LwF, LwFConfig(distillation_reg_factor=0.5, distillation_reg_temperature=2.0,
                               student_no_grad=False))
    for t in (1, 2):
        algo.setup_task(task(t), 1)
        algo.end_task(task(t))
        perturb(algo.backbone, seed=t)  # the student drifts away from each teacher
    algo.setup_task(task(3), 1)
    x = torch.randn(7, 4)
    kd = [lwf_distillation(algo.heads(algo.backbone(x), k), algo.heads(algo.teachers[str(k)](x), k), 2.0)
          for k in (1, 2)]
    for k in (1, 2):  # each teacher really differs from the student
        assert not torch.allclose(algo.heads(algo.teachers[str(k)](x), k), algo.heads(algo.backbone(x), k), atol=0.1)
    stab = algo.stability_loss(Batch(x, torch.zeros(7, dtype=torch.long), 3), STEP)
    assert stab.item() == pytest.approx(0.5 * (kd[0] + kd[1]).item(), rel=1e-6)  # Σ_τ, not averaged
    algo.zero_grad(set_to_none=True)
    stab.backward()
    for k in (1, 2):
        assert algo.heads.head(k).weight.grad is None and algo.heads.head(k).bias.grad is None
    assert algo.backbone.body.fc[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in algo.teachers.parameters())
    algo.forget([1])
    kd2 = lwf_distillation(algo.heads(algo.backbone(x), 2), algo.heads(algo.teachers["2"](x), 2), 2.0)
    stab = algo.stability_loss(Batch(x, torch.zeros(7, dtype=torch.long), 3), STEP)
    assert list(algo.teachers) == ["2"] and stab.item() == pytest.approx(0.5 * kd2.item(), rel=1e-6)


def test_lwf_teachers_stay_in_eval_mode_and_dil_keeps_the_old_head():
    algo = make(LwF, LwFConfig(), scenario="DIL", dropout=0.5)
    algo.setup_task(task(1), 1)
    algo.end_task(task(1))
    old_head = algo.heads.head(1).weight.detach().clone()
    perturb(algo.heads, seed=3)
    algo.setup_task(task(2), 1)
    algo.train()
    assert algo.backbone.training and not algo.teachers["1"].training and not algo.teacher_heads["1"].training
    assert torch.equal(algo.teacher_heads["1"].weight, old_head)
    assert not torch.equal(algo.heads.head(2).weight, old_head)
    assert not any(p is q for p in algo.trainable_parameters() for q in algo.teachers.parameters())


def test_lwf_task_one_is_plain_cross_entropy():
    algo = make(LwF, LwFConfig())
    algo.setup_task(task(1), 1)
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 1, 0, 1, 0])
    assert algo.training_loss(Batch(x, y, 1), STEP).item() == \
        pytest.approx(F.cross_entropy(algo(x, 1), y).item(), abs=1e-7)


# ----- end to end -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name,scenario", [("lwf", "TIL"), ("der", "TIL"), ("derpp", "TIL"), ("derpp", "CIL")])
def test_tiny_runs_give_finite_matrices(tiny, name, scenario):
    extra = ["benchmark=split_digits", "benchmark.num_tasks=3"] if scenario == "CIL" else []
    acc = run(tiny("finetuning_pmnist", f"algorithm={name}", f"scenario={scenario}", *extra)).acc
    assert np.isfinite(acc[np.tril_indices(3)]).all() and np.isnan(acc[np.triu_indices(3, 1)]).all()
    assert acc[0, 0] > 0.5  # it learned task 1


def test_lwf_reference_parity_student_no_grad_trains_exactly_as_finetuning(tiny, one_thread):
    """The reference computes LwF's student logits under no_grad: the distillation is in the loss value but adds no
    gradient, so without BatchNorm LwF's weights equal Finetuning's bit for bit; `student_no_grad=false` differs."""
    from clrepro.engine.loop import Engine

    def final(*overrides):
        engine = Engine(tiny("finetuning_pmnist", *overrides))
        engine.run()
        return {k: v.clone() for k, v in engine.algorithm.backbone.state_dict().items()}

    ft = final()
    parity = final("algorithm=lwf")
    fixed = final("algorithm=lwf", "algorithm.student_no_grad=false")
    assert all(torch.equal(ft[k], parity[k]) for k in ft)
    assert not all(torch.equal(ft[k], fixed[k]) for k in ft)
