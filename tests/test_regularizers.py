"""Parameter regularization: EWC, online EWC, SI, the four Fisher estimators and user plug-ins."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from clrepro.algorithms.base import Batch, Step
from clrepro.algorithms.ewc import EWC, EWCConfig
from clrepro.algorithms.fisher import batch, empirical, exact, sampled
from clrepro.algorithms.online_ewc import OnlineEWC, OnlineEWCConfig
from clrepro.algorithms.regularization import ParamDict
from clrepro.algorithms.si import SI, SIConfig
from clrepro.backbones.base import Backbone
from clrepro.backbones.heads import Heads
from clrepro.config.load import resolved_dict
from clrepro.data.task import Split, Task
from clrepro.engine.loop import Engine
from clrepro.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
ONE_THREAD = "trainer.threads=1"  # the tiny runs are dominated by thread contention on a shared machine


pytestmark = pytest.mark.usefixtures("one_thread")


class Linear(Backbone):
    """A bias-free linear backbone: features = x W^T."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d_in, d_out, bias=False)
        self.output_dim = d_out

    def forward(self, x, mask=None):
        return self.lin(x)


def set_weight(algo, value) -> None:
    with torch.no_grad():
        algo.backbone.lin.weight.copy_(torch.as_tensor(value))


def make_task(task_id: int, x: torch.Tensor, y: torch.Tensor, classes: int = 2) -> Task:
    return Task(task_id, classes, Split(x, y), Split(x[:0], y[:0]), Split(x, y))


# ----- Fisher estimators on softmax regression with two weights ------------------------------------------
# logits z = W x with W ∈ R^{2×1}, x a scalar; ∇_W log p_c = (onehot_c − p) x.
X = torch.tensor([[1.0], [-2.0], [0.5], [3.0], [-1.0]])
Y = torch.tensor([0, 1, 1, 0, 1])
W = torch.tensor([[0.3], [-0.4]])


def softmax_regression(params, x):
    return x @ params["w"].T


def per_sample_probs():
    return [F.softmax((W @ X[n]).double(), 0) for n in range(len(X))]


def test_empirical_fisher_is_mean_squared_true_label_gradient():
    p = per_sample_probs()
    expected = sum(((F.one_hot(Y[n], 2).double() - p[n]) * X[n, 0].double()) ** 2 for n in range(5)) / 5
    got = empirical(softmax_regression, {"w": W}, X, Y, batch_size=2)["w"].squeeze(1)
    assert torch.allclose(got.double(), expected, rtol=1e-5)


def test_exact_fisher_is_expectation_over_predictive_distribution():
    # Σ_c p_c ((onehot_c − p) x)² = p0·p1·x² for both weights of a 2-class softmax
    p = per_sample_probs()
    expected = sum(p[n][0] * p[n][1] * X[n, 0].double() ** 2 for n in range(5)) / 5
    got = exact(softmax_regression, {"w": W}, X, Y, batch_size=3)["w"].squeeze(1)
    assert torch.allclose(got.double(), torch.stack([expected, expected]), rtol=1e-5)


def test_batch_fisher_is_squared_batch_mean_gradient_times_batch_size():
    # batches {0,1,2} and {3,4}: F = (3·ḡ_1² + 2·ḡ_2²) / 5 with ḡ the batch-mean CE gradient (A7)
    p = per_sample_probs()
    g = [(p[n] - F.one_hot(Y[n], 2).double()) * X[n, 0].double() for n in range(5)]
    g1, g2 = sum(g[:3]) / 3, sum(g[3:]) / 2
    expected = (3 * g1 ** 2 + 2 * g2 ** 2) / 5
    got = batch(softmax_regression, {"w": W}, X, Y, batch_size=3)["w"].squeeze(1)
    assert torch.allclose(got.double(), expected, rtol=1e-5)
    # not the empirical Fisher
    assert not torch.allclose(got, empirical(softmax_regression, {"w": W}, X, Y, 3)["w"].squeeze(1), rtol=0.05)


def test_sampled_fisher_uses_labels_drawn_from_the_model():
    p = torch.stack(per_sample_probs()).float()
    torch.manual_seed(7)
    got = sampled(softmax_regression, {"w": W}, X, Y, batch_size=2)["w"]
    torch.manual_seed(7)
    drawn = torch.multinomial(p, 1).squeeze(1)  # the same draws
    assert torch.allclose(got, empirical(softmax_regression, {"w": W}, X, drawn, 2)["w"], rtol=1e-5)
    # statistically: its expectation is the exact Fisher
    many = X.repeat(4000, 1)
    torch.manual_seed(0)
    mean = sampled(softmax_regression, {"w": W}, many, Y.repeat(4000), batch_size=4096)["w"]
    assert torch.allclose(mean, exact(softmax_regression, {"w": W}, X, Y, 5)["w"], rtol=0.03)


# ----- EWC -------------------------------------------------------------------------------------------
def test_ewc_penalty_is_half_lambda_fisher_weighted_distance_per_old_task():
    algo = EWC(Linear(2, 1), Heads("TIL", 1), EWCConfig(parameter_change_reg_factor=10.0), 3)
    algo.setup_task(make_task(3, torch.ones(4, 2), torch.zeros(4, dtype=torch.long)), 1)
    set_weight(algo, [[1.0, 2.0]])
    name = "backbone.lin.weight"
    algo.fishers = {1: ParamDict({name: torch.tensor([[0.5, 2.0]])}), 2: ParamDict({name: torch.tensor([[1.0, 0.0]])})}
    algo.snapshots = {1: ParamDict({name: torch.tensor([[0.0, 1.0]])}),
                      2: ParamDict({"backbone__lin__weight": torch.tensor([[3.0, 3.0]])})}  # either spelling
    # task 1: ½(0.5·1² + 2·1²) = 1.25; task 2: ½(1·(1−3)² + 0·1²) = 2; × λ = 10
    penalty = algo.reg_strength * algo.regularization_loss()
    assert penalty.item() == pytest.approx(32.5)
    penalty.backward()  # ∂/∂θ = λ Σ_τ F_τ (θ − θ*_τ) = 10·(0.5·1 + 1·(−2), 2·1 + 0·(−1))
    assert algo.backbone.lin.weight.grad[0].tolist() == pytest.approx([-15.0, 20.0])
    algo.forget([1])
    assert (algo.reg_strength * algo.regularization_loss()).item() == pytest.approx(20.0)
    assert EWC.update_deletion and not OnlineEWC.update_deletion and not SI.update_deletion
    assert not EWC.lr_scheduler_live


def test_ewc_train_mode_accumulates_batch_fisher_from_ce_gradient_only():
    torch.manual_seed(0)
    algo = EWC(Linear(3, 4), Heads("TIL", 4), EWCConfig(parameter_change_reg_factor=100.0), 3)
    x, y = torch.randn(10, 3), torch.randint(0, 2, (10,))
    for t in (1, 2):
        algo.setup_task(make_task(t, x, y), 2)
        batches = [(x[:5], y[:5]), (x[5:], y[5:])]
        for b, (xb, yb) in enumerate(batches):
            algo.zero_grad()
            loss = algo.training_loss(Batch(xb, yb, t), Step(t, 0, b, 2, b))
            loss.backward()
            plain = F.cross_entropy(algo(xb, t), yb)
            if t > 1:
                plain = plain + algo.reg_strength * algo.regularization_loss()
            reference = torch.autograd.grad(plain, [algo.backbone.lin.weight])[0]
            assert loss.item() == pytest.approx(plain.item(), rel=1e-6)
            assert torch.allclose(algo.backbone.lin.weight.grad, reference, atol=1e-6)  # the same gradient
            with torch.no_grad():
                algo.backbone.lin.weight.add_(0.01 * t)  # move off θ* so the penalty is non-zero
        algo.end_task(make_task(t, x, y))
    # task 2's Fisher: Σ_B |B|·(∇CE_B)² / N, from CE alone, at the parameters each batch was seen with
    w0 = algo.snapshots[1]["backbone.lin.weight"]
    expected = 0
    for b, (xb, yb) in enumerate([(x[:5], y[:5]), (x[5:], y[5:])]):
        params = {"backbone.lin.weight": w0 + 0.02 * b}
        expected = expected + 5 * batch(lambda ps, xx: functional_call(algo, ps, (xx, 2)), params, xb, yb, 5)[
            "backbone.lin.weight"]
    assert torch.allclose(algo.fishers[2]["backbone.lin.weight"], expected / 10, rtol=1e-5)


def test_ewc_rejects_per_sample_estimator_during_training():
    with pytest.raises(ConfigError, match="train_end"):
        EWC(Linear(2, 1), Heads("TIL", 1), EWCConfig(fisher="exact"), 3)


# ----- online EWC ------------------------------------------------------------------------------------
def test_online_ewc_running_fisher_is_gamma_old_plus_new():
    torch.manual_seed(1)
    cfg = OnlineEWCConfig(parameter_change_reg_factor=4.0, gamma=0.5, fisher="exact")
    algo = OnlineEWC(Linear(3, 2), Heads("TIL", 2), cfg, 2)
    x, y = torch.randn(12, 3), torch.randint(0, 3, (12,))
    name = "backbone.lin.weight"

    def fisher_now(task_id):
        params = {name: algo.backbone.lin.weight.detach()}
        return exact(lambda ps, xx: functional_call(algo, ps, (xx, task_id)), params, x, y, 128)[name]

    algo.setup_task(make_task(1, x, y, 3), 1)
    algo.end_task(make_task(1, x, y, 3))
    f1 = fisher_now(1)
    assert torch.allclose(algo._custom_importance[name], f1)
    set_weight(algo, algo.backbone.lin.weight.detach() + torch.tensor([[0.3, -0.2, 0.1], [0.0, 0.5, -0.4]]))
    algo.setup_task(make_task(2, x, y, 3), 1)
    algo.end_task(make_task(2, x, y, 3))
    f2 = fisher_now(2)
    assert not torch.allclose(f1, f2)
    assert torch.allclose(algo._custom_importance[name], 0.5 * f1 + f2)
    assert torch.equal(algo._custom_prev_params[name], algo.backbone.lin.weight.detach())  # θ* = latest
    set_weight(algo, algo.backbone.lin.weight.detach() + 1.0)  # θ − θ* = 1 everywhere
    penalty = algo.reg_strength * algo.regularization_loss()
    assert penalty.item() == pytest.approx(0.5 * 4.0 * 0.5 * float((0.5 * f1 + f2).sum()), rel=1e-5)


# ----- SI -----------------------------------------------------------------------------------------------
def test_si_omega_is_the_path_integral_over_a_hand_trajectory():
    algo = SI(Linear(2, 1), Heads("TIL", 1), SIConfig(c=2.0, epsilon=0.1), 2)
    x, y = torch.ones(3, 2), torch.zeros(3, dtype=torch.long)
    p = algo.backbone.lin.weight
    set_weight(algo, [[0.0, 0.0]])
    algo.setup_task(make_task(1, x, y, 1), 3)
    trajectory = [([1.0, -2.0], [0.5, 0.1]), ([0.5, 1.0], [0.7, -0.3]), ([-1.0, 0.2], [0.4, -0.2])]  # (g_k, θ_k)
    for k, (g, theta) in enumerate(trajectory):
        p.grad = torch.tensor([g])
        set_weight(algo, [theta])  # the optimizer step
        algo.after_optimizer_step(Step(1, 0, k, 3, k))
    # W = −Σ g_k (θ_k − θ_{k−1}): −(0.5 + 0.1 + 0.3) = −0.9 and −(−0.2 − 0.4 + 0.02) = 0.58
    assert algo._custom_W["backbone.lin.weight"][0].tolist() == pytest.approx([-0.9, 0.58])
    algo.end_task(make_task(1, x, y, 1))
    omega1 = [-0.9 / (0.4 ** 2 + 0.1), 0.58 / (0.2 ** 2 + 0.1)]  # W / (Δθ² + ξ)
    assert algo._custom_importance["backbone.lin.weight"][0].tolist() == pytest.approx(omega1, rel=1e-5)
    assert algo._custom_prev_params["backbone.lin.weight"][0].tolist() == pytest.approx([0.4, -0.2])  # θ*
    # second task, one step: ω accumulates
    algo.setup_task(make_task(2, x, y, 1), 1)
    assert algo._custom_W["backbone.lin.weight"].tolist() == [[0.0, 0.0]]
    p.grad = torch.tensor([[2.0, 1.0]])
    set_weight(algo, [[0.1, 0.0]])
    algo.after_optimizer_step(Step(2, 0, 0, 1, 3))
    algo.end_task(make_task(2, x, y, 1))
    omega2 = [omega1[0] + 0.6 / (0.3 ** 2 + 0.1), omega1[1] + -0.2 / (0.2 ** 2 + 0.1)]
    assert algo._custom_importance["backbone.lin.weight"][0].tolist() == pytest.approx(omega2, rel=1e-5)
    set_weight(algo, [[1.1, 1.0]])  # θ − θ* = (1, 1): loss c·Σω
    assert (algo.reg_strength * algo.regularization_loss()).item() == pytest.approx(2.0 * sum(omega2), rel=1e-5)


# ----- end to end on the tiny config -------------------------------------------------------------------
def _run_capturing(cfg):
    engine = Engine(cfg)
    after_task1 = {}

    class Capture:
        def on_task_end(self, task_id, **kw):
            if task_id == 1:
                after_task1.update({n: p.detach().clone() for n, p in engine.algorithm.backbone.named_parameters()})

    engine.fabric._callbacks.append(Capture())
    return engine, engine.run(), after_task1


@pytest.mark.parametrize("algorithm, scenario, extra", [
    ("ewc", "TIL", []), ("online_ewc", "TIL", []), ("si", "TIL", []), ("ewc", "DIL", []),
    ("ewc", "CIL", ["algorithm.when_calculate_fisher_information=train_end", "algorithm.fisher=sampled"]),
])
def test_end_to_end_tiny_runs(tiny, algorithm, scenario, extra):
    cfg = tiny("finetuning_pmnist", f"algorithm={algorithm}", f"scenario={scenario}", ONE_THREAD, *extra)
    engine, result, task1 = _run_capturing(cfg)
    fin, fin_result, fin_task1 = _run_capturing(tiny("finetuning_pmnist", f"scenario={scenario}", ONE_THREAD))
    lower = np.tril_indices(3)
    assert np.isfinite(result.acc[lower]).all() and np.isnan(result.acc[np.triu_indices(3, 1)]).all()
    # task 1 trains with CE alone: bit-identical to Finetuning (EWC's surrogate hands the same gradient)
    assert all(torch.equal(task1[n], fin_task1[n]) for n in task1)
    final = dict(engine.algorithm.backbone.named_parameters())
    fin_final = dict(fin.algorithm.backbone.named_parameters())
    assert not all(torch.equal(final[n], fin_final[n]) for n in final)
    if algorithm != "si":  # λ = 5000 holds the backbone near θ*_1 far more than Finetuning
        drift = sum((final[n] - task1[n]).pow(2).sum() for n in final)
        fin_drift = sum((fin_final[n] - task1[n]).pow(2).sum() for n in final)
        assert drift < 0.5 * fin_drift
    resolved = resolved_dict(cfg)["algorithm"]  # the estimator used lands in the resolved config
    if algorithm != "si":
        assert resolved["fisher"] == ("sampled" if extra else {"ewc": "batch", "online_ewc": "exact"}[algorithm])


# ----- plug-ins ------------------------------------------------------------------------------------------
PLUGIN = '''"""Test L2 regularizer: unit importance, written in the benchmark's style."""
import torch

NAME = "test_l2_plugin"
CALLS = {"estimate": [], "loss": []}


def estimate_importance(model, dataset, prev_params, device):
    CALLS["estimate"].append((model.task_id, dataset.task_id, len(dataset)))
    importance = {}
    for gen_params in model.param_list:
        for n, p in gen_params():
            n = n.replace(".", "__")
            assert n in prev_params and n in model._custom_W
            importance[n] = torch.ones_like(p)
    return importance


def compute_regularization_loss(model, importance_dict, prev_params_dict):
    CALLS["loss"].append(model.task_id)
    losses = []
    for gen_params in model.param_list:
        for n, p in gen_params():
            n = n.replace(".", "__")
            losses.append((importance_dict[n] * (p - prev_params_dict[n]) ** 2).sum())
    return sum(losses)
'''


@pytest.fixture(scope="module")
def plugin_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("plugin") / "my_l2.py"
    path.write_text(PLUGIN)
    return path


def test_plugin_changes_training_and_its_functions_run(tiny, plugin_file):
    from clrepro.plugins import load_plugin
    from clrepro.registry import ALGORITHMS

    cls = load_plugin(plugin_file)
    assert load_plugin(str(plugin_file)) is cls and ALGORITHMS.get("test_l2_plugin") is cls
    calls = cls.plugin_module.CALLS
    calls["estimate"].clear(), calls["loss"].clear()
    cfg = tiny("finetuning_pmnist", "algorithm.name=test_l2_plugin", "+algorithm.reg_strength=50", ONE_THREAD)
    engine, result, task1 = _run_capturing(cfg)
    fin, fin_result, fin_task1 = _run_capturing(tiny("finetuning_pmnist", ONE_THREAD))
    assert [c[:2] for c in calls["estimate"]] == [(1, 1), (2, 2), (3, 3)]
    per_task = result.steps // 3
    assert sorted(set(calls["loss"])) == [2, 3] and len(calls["loss"]) == 2 * per_task  # every step from task 2
    assert result.acc[0, 0] == fin_result.acc[0, 0]  # task 1 is unregularized
    final = dict(engine.algorithm.backbone.named_parameters())
    fin_final = dict(fin.algorithm.backbone.named_parameters())
    assert not all(torch.equal(final[n], fin_final[n]) for n in final)
    assert not np.array_equal(result.acc, fin_result.acc, equal_nan=True)


def test_cli_run_with_plugin(plugin_file, tmp_path):
    from tests.conftest import TINY

    out = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "clrepro", "run", "--plugin", str(plugin_file), "--quiet",
                        "--out", str(out), "finetuning_pmnist", *TINY, "algorithm.name=test_l2_plugin",
                        "+algorithm.reg_strength=50", ONE_THREAD],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr
    from clrepro.metrics.io import read_acc_matrix

    acc = read_acc_matrix(out / "acc.csv")
    assert acc.shape == (3, 3) and np.isfinite(acc[np.tril_indices(3)]).all()
    assert "test_l2_plugin" in (out / "config.yaml").read_text()


@pytest.mark.parametrize("content, expected", [
    (None, "plugin file not found"),
    ("def estimate_importance(model, dataset, prev_params, device):\n    return {}\n",
     "(missing: compute_regularization_loss)"),
    ("raise RuntimeError('boom')\n", "plugin failed to import (RuntimeError: boom)"),
])
def test_bad_plugin_is_one_line_exit_2(tmp_path, capsys, content, expected):
    from clrepro.cli.main import main

    path = tmp_path / "bad_plugin.py"
    if content is not None:
        path.write_text(content)
    assert main(["run", "--plugin", str(path), "finetuning_pmnist"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0] and str(path) in err[0]


@pytest.mark.parametrize("estimator", ["empirical", "exact"])
def test_linear_layer_fast_path_equals_the_vmap_estimator(estimator):
    """fisher_pass's hook-based path for Linear layers ((w⊙δ²)ᵀa²) gives the per-sample vmap estimator's F."""
    from clrepro.algorithms import ewc as ewc_module
    from clrepro.algorithms.ewc import fisher_pass
    from clrepro.config.load import load_experiment
    from clrepro.engine.loop import Engine

    eng = Engine(load_experiment("finetuning_pmnist", ["benchmark=pdigits", "benchmark.num_tasks=2",
                                                       "backbone.hidden=[16,8]", "backbone.batch_norm=false",
                                                       "algorithm=online_ewc", "scenario=DIL"]))
    algo = eng.algorithm
    task = eng._task(1)
    algo.setup_task(task, 1)
    data = algo.importance_data(task)
    data.x, data.y = data.x[:300], data.y[:300]
    fast = fisher_pass(algo, data, estimator, 64)
    real = ewc_module.linear_squared_grads
    ewc_module.linear_squared_grads = lambda model, names: None  # force the vmap estimator
    try:
        slow = fisher_pass(algo, data, estimator, 64)
    finally:
        ewc_module.linear_squared_grads = real
    assert set(fast) == set(slow) and any("heads" in k for k in fast)  # DIL: the shared head is regularized
    for k in slow:
        assert torch.allclose(fast[k], slow[k], rtol=1e-4, atol=1e-9), k


def test_ewc_cls_gradient_twice_doubles_only_the_classification_gradient(tiny, one_thread):
    """CLArena 1.1.0's EWC step: the Fisher backward of CE is not zeroed, so the update sees 2·∇CE + ∇penalty."""
    from clrepro.algorithms.base import Batch, Step
    from clrepro.engine.loop import Engine

    grads = {}
    for twice in (False, True):
        engine = Engine(tiny("finetuning_pmnist", "algorithm=ewc", f"algorithm.cls_gradient_twice={twice}"))
        algo = engine.algorithm
        task = engine._task(1)
        algo.setup_task(task, 1)
        batch = Batch(task.train.x[:16], task.train.y[:16], 1)
        algo.zero_grad()
        algo.training_loss(batch, Step(1, 0, 0, 1, 0)).backward()
        grads[twice] = [p.grad.clone() for p in algo.trainable_parameters() if p.grad is not None]
    assert len(grads[True]) == len(grads[False]) > 0
    assert all(torch.allclose(b, 2 * a) for a, b in zip(grads[False], grads[True]))  # task 1: no penalty yet
