"""Options that express a parity peer's variant (Avalanche 0.6.0) in clrepro, checked against hand values.

SI `omega_max`, LwF `teachers=latest` / `train_old_heads` / `log_epsilon`, DER `buffer_policy=class_balanced_task_end`.
Every option defaults to the previous behaviour (the existing tests cover that path).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clrepro.algorithms.base import Batch, Step
from clrepro.algorithms.der import DER, DERConfig, DERpp, DERppConfig, ClassBalancedTaskEndBuffer
from clrepro.algorithms.lwf import LwF, LwFConfig, lwf_distillation
from clrepro.algorithms.si import SI, SIConfig
from clrepro.backbones.base import Backbone
from clrepro.backbones.heads import Heads
from clrepro.backbones.mlp import MLP, MLPConfig
from clrepro.data.task import Split, Task

STEP = Step(task_id=1, epoch=0, batch_idx=0, num_batches=1, global_step=0)


class Linear(Backbone):
    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d_in, d_out, bias=False)
        self.output_dim = d_out

    def forward(self, x, mask=None):
        return self.lin(x)


def set_weight(algo, value) -> None:
    with torch.no_grad():
        algo.backbone.lin.weight.copy_(torch.as_tensor(value))


def make_task(task_id, x, y, classes=2) -> Task:
    return Task(task_id, classes, Split(x, y), Split(x[:0], y[:0]), Split(x, y))


def mlp_algo(cls, cfg, scenario="TIL"):
    torch.manual_seed(0)
    backbone = MLP((4,), MLPConfig(hidden=[5]))
    return cls(backbone, Heads(scenario, backbone.output_dim), cfg, num_tasks=3)


def perturb(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g))


# ----- SI: omega_max ---------------------------------------------------------------------------------------
def test_si_omega_max_clamps_the_penalty_but_accumulates_the_unclamped_sum():
    algo = SI(Linear(2, 1), Heads("TIL", 1), SIConfig(c=2.0, epsilon=0.1, omega_max=1.0), 2)
    x, y = torch.ones(3, 2), torch.zeros(3, dtype=torch.long)
    p = algo.backbone.lin.weight
    set_weight(algo, [[0.0, 0.0]])
    algo.setup_task(make_task(1, x, y, 1), 2)
    for k, (g, theta) in enumerate([([-4.0, 1.0], [0.5, 0.1]), ([-2.0, 1.0], [0.4, -0.2])]):
        p.grad = torch.tensor([g])
        set_weight(algo, [theta])
        algo.after_optimizer_step(Step(1, 0, k, 2, k))
    # W = −Σ g Δθ: −(−4·0.5 − 2·(−0.1)) = 1.8 and −(1·0.1 + 1·(−0.3)) = 0.2
    algo.end_task(make_task(1, x, y, 1))
    raw1 = [1.8 / (0.4 ** 2 + 0.1), 0.2 / (0.2 ** 2 + 0.1)]  # 6.923, 1.4286
    assert algo._custom_importance["backbone.lin.weight"][0].tolist() == pytest.approx([1.0, 1.0])  # clamped at 1
    algo.setup_task(make_task(2, x, y, 1), 1)
    p.grad = torch.tensor([[1.0, 2.0]])
    set_weight(algo, [[0.5, -0.2]])  # Δθ = (0.1, 0): W = (−0.1, 0)
    algo.after_optimizer_step(Step(2, 0, 0, 1, 2))
    algo.end_task(make_task(2, x, y, 1))
    raw2 = [raw1[0] - 0.1 / (0.1 ** 2 + 0.1), raw1[1] + 0.0]  # the unclamped sums go on: 6.014, 1.4286
    assert algo._omega_sum["backbone.lin.weight"][0].tolist() == pytest.approx(raw2, rel=1e-5)
    assert algo._custom_importance["backbone.lin.weight"][0].tolist() == pytest.approx([1.0, 1.0])
    set_weight(algo, [[1.5, 0.8]])  # θ − θ* = (1, 1): loss c·Σ min(ω, 1) = 2·2
    assert (algo.reg_strength * algo.regularization_loss()).item() == pytest.approx(4.0)


def test_si_omega_max_leaves_a_small_omega_and_negative_values_alone():
    algo = SI(Linear(2, 1), Heads("TIL", 1), SIConfig(c=1.0, epsilon=0.1, omega_max=0.5), 2)
    x, y = torch.ones(3, 2), torch.zeros(3, dtype=torch.long)
    set_weight(algo, [[0.0, 0.0]])
    algo.setup_task(make_task(1, x, y, 1), 1)
    algo.backbone.lin.weight.grad = torch.tensor([[-0.1, 1.0]])
    set_weight(algo, [[0.3, 0.3]])
    algo.after_optimizer_step(STEP)
    algo.end_task(make_task(1, x, y, 1))
    omega = [0.03 / (0.09 + 0.1), -0.3 / (0.09 + 0.1)]  # 0.158 (< 0.5) and −1.58 (no lower clamp)
    assert algo._custom_importance["backbone.lin.weight"][0].tolist() == pytest.approx(omega, rel=1e-5)


# ----- LwF: log_epsilon, teachers=latest, train_old_heads --------------------------------------------------
def test_lwf_log_epsilon_zero_is_the_soft_target_cross_entropy_with_kl_gradient():
    z_s = torch.tensor([[1.0, -1.0, 0.5], [0.0, 2.0, -3.0]], requires_grad=True)
    z_t = torch.tensor([[0.2, 0.1, -0.4], [1.5, -0.5, 0.0]])
    T = 2.0
    q = [[math.exp(v / T) for v in row] for row in z_t.tolist()]
    q = [[v / sum(row) for v in row] for row in q]
    logp = [[v / T - math.log(sum(math.exp(u / T) for u in row)) for v in row] for row in z_s.tolist()]
    hand = -sum(q[n][c] * logp[n][c] for n in range(2) for c in range(3)) / 2
    kd = lwf_distillation(z_s, z_t, T, log_epsilon=0.0)
    assert kd.item() == pytest.approx(hand, rel=1e-6)
    # the same gradient as Avalanche's kl_div(log_softmax(z/T), softmax(z_t/T), batchmean)
    g_kd, = torch.autograd.grad(kd, z_s)
    kl = F.kl_div(F.log_softmax(z_s / T, 1), F.softmax(z_t / T, 1), reduction="batchmean")
    g_kl, = torch.autograd.grad(kl, z_s)
    assert torch.allclose(g_kd, g_kl, atol=1e-7)
    # the default keeps the reference's +1e-5 inside the log
    p_s = F.softmax(z_s / T, 1)
    assert lwf_distillation(z_s, z_t, T).item() == pytest.approx(
        -(F.softmax(z_t / T, 1) * torch.log(p_s + 1e-5)).sum(1).mean().item(), rel=1e-6)


def test_lwf_latest_teacher_distils_every_old_head_from_the_previous_model_and_trains_them():
    cfg = LwFConfig(distillation_reg_factor=0.5, distillation_reg_temperature=2.0, teachers="latest",
                    student_no_grad=False, train_old_heads=True, log_epsilon=0.0)
    algo = mlp_algo(LwF, cfg)
    empty = Split(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    tasks = [Task(t, 2, empty, empty, empty) for t in (1, 2, 3)]
    algo.setup_task(tasks[0], 1)
    x = torch.randn(7, 4)
    assert algo.stability_loss(Batch(x, torch.zeros(7, dtype=torch.long), 1), STEP).item() == 0.0
    algo.end_task(tasks[0])
    perturb(algo, seed=1)
    algo.setup_task(tasks[1], 1)
    algo.end_task(tasks[1])  # the teacher is now the model after task 2: task 1's teacher is gone
    prev_backbone = [p.detach().clone() for p in algo.backbone.parameters()]
    prev_heads = {k: (algo.heads.head(k).weight.detach().clone(), algo.heads.head(k).bias.detach().clone())
                  for k in (1, 2)}
    assert list(algo.teachers) == ["latest"]
    perturb(algo.backbone, seed=2)  # the student drifts; the teacher copy does not
    perturb(algo.heads, seed=3)
    algo.setup_task(tasks[2], 1)
    # hand: the previous model's features through its own heads 1 and 2
    h = x
    fc = [(w, b) for w, b in zip(prev_backbone[0::2], prev_backbone[1::2])]
    for w, b in fc:
        h = torch.relu(h @ w.T + b)
    kd = []
    for k in (1, 2):
        w, b = prev_heads[k]
        kd.append(lwf_distillation(algo.heads(algo.backbone(x), k), h @ w.T + b, 2.0, log_epsilon=0.0))
    stab = algo.stability_loss(Batch(x, torch.zeros(7, dtype=torch.long), 3), STEP)
    assert stab.item() == pytest.approx(0.5 * (kd[0] + kd[1]).item(), rel=1e-6)
    algo.zero_grad(set_to_none=True)
    stab.backward()
    for k in (1, 2):  # train_old_heads: the distillation reaches the old heads
        assert algo.heads.head(k).weight.grad.abs().sum() > 0
    assert algo.heads.head(3).weight.grad is None  # the current head is not distilled
    assert all(p.grad is None for p in algo.teachers.parameters())
    assert all(p.grad is None for p in algo.teacher_heads.parameters())
    assert not any(p is q for p in algo.trainable_parameters() for q in algo.teacher_heads.parameters())


def test_lwf_latest_teacher_in_dil_distils_the_shared_head_once():
    cfg = LwFConfig(distillation_reg_factor=1.0, distillation_reg_temperature=2.0, teachers="latest",
                    student_no_grad=False, train_old_heads=False)
    algo = mlp_algo(LwF, cfg, scenario="DIL")
    empty = Split(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    for t in (1, 2):
        algo.setup_task(Task(t, 3, empty, empty, empty), 1)
        algo.end_task(Task(t, 3, empty, empty, empty))
        perturb(algo.backbone, seed=t)
    algo.setup_task(Task(3, 3, empty, empty, empty), 1)
    x = torch.randn(5, 4)
    teacher = algo.teacher_heads["latest"].head(1)(algo.teachers["latest"](x))
    one = lwf_distillation(algo.heads(algo.backbone(x), 3), teacher, 2.0)
    stab = algo.stability_loss(Batch(x, torch.zeros(5, dtype=torch.long), 3), STEP)
    assert stab.item() == pytest.approx(one.item(), rel=1e-6)  # one term, not one per earlier task
    stab.backward()
    assert algo.heads.head(3).weight.grad is None  # train_old_heads=false: the shared head stays detached


# ----- DER: class_balanced_task_end --------------------------------------------------------------------------
def test_class_balanced_buffer_splits_capacity_over_classes_and_keeps_the_largest_keys(monkeypatch):
    buf = ClassBalancedTaskEndBuffer(5)
    keys = iter([torch.tensor([0.9, 0.1, 0.8, 0.7, 0.2, 0.6]), torch.tensor([0.95, 0.05, 0.5, 0.3])])
    monkeypatch.setattr(torch, "rand", lambda n: next(keys))
    x1 = torch.arange(6, dtype=torch.float).unsqueeze(1)
    y1 = torch.tensor([0, 0, 1, 1, 2, 2])
    buf.add_task(x1, y1, torch.arange(6, dtype=torch.float).unsqueeze(1).repeat(1, 2), 1)
    # K=5 over 3 classes: 2, 2, 1 (ascending class order); each class keeps its largest keys
    assert sorted(buf.x.squeeze(1).tolist()) == [0.0, 1.0, 2.0, 3.0, 5.0]
    x2 = torch.tensor([[10.0], [11.0], [12.0], [13.0]])
    y2 = torch.tensor([0, 1, 3, 3])
    buf.add_task(x2, y2, torch.full((4, 3), 7.0), 2)
    # 4 classes now: 2, 1, 1, 1; class 0: keys {10: .95, 0: .9, 1: .1} -> 10, 0; class 1: {2: .8, 3: .7, 11: .05}
    # -> 2; class 2: 5 (.6); class 3: {12: .5, 13: .3} -> 12
    assert sorted(buf.x.squeeze(1).tolist()) == [0.0, 2.0, 5.0, 10.0, 12.0]
    i10 = buf.x.squeeze(1).tolist().index(10.0)
    i0 = buf.x.squeeze(1).tolist().index(0.0)
    assert buf.logits[i10].tolist() == [7.0, 7.0, 7.0] and buf.logits[i0].tolist() == [0.0, 0.0, 0.0]  # padded
    assert buf.task_id[i10].item() == 2 and buf.task_id[i0].item() == 1


def test_class_balanced_buffer_replays_passes_without_replacement_and_no_partial_batch():
    buf = ClassBalancedTaskEndBuffer(10)
    x = torch.arange(10, dtype=torch.float).unsqueeze(1)
    buf.add_task(x, torch.arange(10) % 2, torch.zeros(10, 2), 1)
    assert buf.sample(11) is None  # fewer entries than a batch: no replay
    torch.manual_seed(0)
    first = [buf.sample(4).x.squeeze(1).tolist() for _ in range(2)]
    assert len(set(first[0] + first[1])) == 8  # one pass: no repeats
    third = buf.sample(4).x.squeeze(1).tolist()  # only 2 left in the pass: a new permutation
    assert len(set(third)) == 4
    torch.manual_seed(0)
    perm = torch.randperm(10)
    assert first == [buf.x[perm[:4]].squeeze(1).tolist(), buf.x[perm[4:8]].squeeze(1).tolist()]


def test_der_task_end_buffer_stores_eval_logits_after_the_task_and_replays_it_in_the_loss():
    cfg = DERConfig(buffer_size=20, distillation_reg_factor=0.5, buffer_policy="class_balanced_task_end")
    algo = mlp_algo(DER, cfg, scenario="DIL")
    g = torch.Generator().manual_seed(3)
    x1, y1 = torch.randn(12, 4, generator=g), torch.randint(0, 3, (12,), generator=g)
    t1 = Task(1, 3, Split(x1, y1), Split(x1[:0], y1[:0]), Split(x1, y1))
    algo.setup_task(t1, 3)
    xb, yb = x1[:4], y1[:4]
    loss = algo.training_loss(Batch(xb, yb, 1), STEP)
    assert loss.item() == pytest.approx(F.cross_entropy(algo(xb, 1), yb).item(), abs=1e-7)  # no replay in task 1
    algo.after_optimizer_step(STEP)
    assert len(algo.buffer) == 0  # nothing stored during training
    algo.end_task(t1)
    assert len(algo.buffer) == 12
    with torch.no_grad():
        z = algo(x1, 1)
    order = [x1.tolist().index(r) for r in algo.buffer.x.tolist()]
    assert torch.allclose(algo.buffer.logits, z[order])  # the model's logits at the task's end
    perturb(algo, seed=5)
    x2 = torch.randn(12, 4, generator=g)
    algo.setup_task(Task(2, 3, Split(x2, y1), Split(x2[:0], y1[:0]), Split(x2, y1)), 3)
    torch.manual_seed(7)
    perm = torch.randperm(12)[:4]
    torch.manual_seed(7)
    xb2 = x2[:4]
    loss = algo.training_loss(Batch(xb2, y1[:4], 2), STEP)
    rx, rz = algo.buffer.x[perm], algo.buffer.logits[perm]
    hand = F.cross_entropy(algo(xb2, 2), y1[:4]) + 0.5 * F.mse_loss(algo(rx, 2), rz)
    assert loss.item() == pytest.approx(hand.item(), rel=1e-6)


def test_derpp_task_end_buffer_adds_beta_ce_on_the_same_replay_batch():
    cfg = DERppConfig(buffer_size=8, distillation_reg_factor=0.3, replay_ce_factor=0.7,
                      buffer_policy="class_balanced_task_end")
    algo = mlp_algo(DERpp, cfg, scenario="DIL")
    g = torch.Generator().manual_seed(4)
    x1, y1 = torch.randn(10, 4, generator=g), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    t1 = Task(1, 3, Split(x1, y1), Split(x1[:0], y1[:0]), Split(x1, y1))
    algo.setup_task(t1, 1)
    algo.end_task(t1)
    assert len(algo.buffer) == 8 and torch.bincount(algo.buffer.y).tolist() == [3, 3, 2]  # 8 over 3 classes
    x2 = torch.randn(4, 4, generator=g)
    algo.setup_task(Task(2, 3, Split(x2, y1[:4]), Split(x2[:0], y1[:0]), Split(x2, y1[:4])), 1)
    torch.manual_seed(11)
    perm = torch.randperm(8)[:4]
    torch.manual_seed(11)
    loss = algo.training_loss(Batch(x2, y1[:4], 2), STEP)
    r = algo.buffer
    out = algo(r.x[perm], 2)
    hand = (F.cross_entropy(algo(x2, 2), y1[:4]) + 0.3 * F.mse_loss(out, r.logits[perm])
            + 0.7 * F.cross_entropy(out, r.y[perm]))
    assert loss.item() == pytest.approx(hand.item(), rel=1e-6)


# ----- EWC / online EWC: fisher_order=by_class ---------------------------------------------------------------
def test_ewc_by_class_fisher_uses_label_sorted_consecutive_batches():
    from clrepro.algorithms.ewc import EWC, EWCConfig, fisher_pass
    from clrepro.algorithms.regularization import TaskData

    cfg = EWCConfig(when_calculate_fisher_information="train_end", fisher="batch", fisher_batch_size=2,
                    fisher_order="by_class")
    algo = EWC(Linear(1, 2), Heads("TIL", 2), cfg, 2)
    algo.setup_task(make_task(1, torch.zeros(1, 1), torch.zeros(1, dtype=torch.long)), 1)
    set_weight(algo, [[0.5], [-0.5]])
    with torch.no_grad():
        algo.heads.head(1).weight.copy_(torch.eye(2))
        algo.heads.head(1).bias.zero_()
    x = torch.tensor([[1.0], [2.0], [-1.0], [3.0], [0.5]])
    y = torch.tensor([1, 0, 1, 0, 0])  # by class: x = 2, 3, 0.5 (label 0), then 1, -1 (label 1)
    F_ = fisher_pass(algo, TaskData(x, y, 1), "batch", 2, "by_class")["backbone.lin.weight"]

    def grad(xs, ys):  # ∂ mean CE / ∂W for logits (0.5x, −0.5x): (p − onehot)·x per sample, averaged
        g = torch.zeros(2)
        for xi, yi in zip(xs, ys):
            z = torch.tensor([0.5 * xi, -0.5 * xi])
            g += (torch.softmax(z, 0) - F.one_hot(torch.tensor(yi), 2).float()) * xi
        return g / len(xs)

    batches = [([2.0, 3.0], [0, 0]), ([0.5, 1.0], [0, 1]), ([-1.0], [1])]  # consecutive, the last one partial
    hand = sum(len(b[0]) * grad(*b) ** 2 for b in batches) / 5
    assert F_[:, 0].tolist() == pytest.approx(hand.tolist(), rel=1e-5)
    algo.cfg.fisher_order = "shuffled"  # the default keeps the reference's shuffled, drop-last pass
    torch.manual_seed(0)
    keep = torch.randperm(5)[:4]
    shuffled = sum(2 * grad(x[keep[i:i + 2], 0].tolist(), y[keep[i:i + 2]].tolist()) ** 2 for i in (0, 2)) / 4
    torch.manual_seed(0)
    F_s = fisher_pass(algo, TaskData(x, y, 1), "batch", 2)["backbone.lin.weight"]
    assert F_s[:, 0].tolist() == pytest.approx(shuffled.tolist(), rel=1e-5)
