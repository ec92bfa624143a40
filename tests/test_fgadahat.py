"""FG-AdaHAT: the nine neuron-importance measures on a tiny layer, the adjustment, the importance folding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from clrepro.algorithms import importance as imp
from clrepro.algorithms.fgadahat import SUMMING
from clrepro.engine.loop import Engine


def tiny_view():
    """Layer 1 of a 3-2-2 network with hand-set weights, gradients and activations."""
    W = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])          # (2 units, 3 inputs)
    G = torch.tensor([[0.1, -0.2, 0.0], [0.3, 0.0, -0.4]])
    W_next = torch.tensor([[2.0, -1.0], [0.5, 4.0]])                 # (2 outputs, 2 units)
    G_next = torch.tensor([[-0.5, 0.1], [0.2, 0.3]])
    h = torch.tensor([[1.0, 0.0], [3.0, 2.0]])                       # batch of 2, post-ReLU
    module = nn.Linear(3, 2)
    return imp.LayerView("fc1", module, W, G, W_next, G_next, h)


def test_direct_measures_match_hand_values():
    v = tiny_view()
    act = torch.tensor([2.0, 1.0])                                   # mean |h| per unit
    assert torch.allclose(imp.ig(v, None), torch.tensor([0.3, 0.7]))             # Σ_j |g_ij|
    assert torch.allclose(imp.og(v, None), torch.tensor([0.7, 0.4]))             # Σ_k |g'_ki|
    assert torch.allclose(imp.icu(v, None), torch.tensor([3.5, 4.0]) * act)      # Σ_j |W_ij| · mean|h_i|
    assert torch.allclose(imp.cu(v, None), torch.tensor([2.5, 5.0]) * act)       # Σ_k |W'_ki| · mean|h_i|
    assert torch.allclose(imp.afi(v, None), torch.tensor([0.05, 0.25]) * act)    # Σ_j g_ij² · mean|h_i|


def test_conv_layers_reduce_over_kernels_and_space():
    W = torch.ones(4, 3, 3, 3)
    h = torch.ones(2, 4, 5, 5) * torch.arange(1.0, 5.0).view(1, 4, 1, 1)
    v = imp.LayerView("c", nn.Conv2d(3, 4, 3), W, W * 2, torch.ones(6, 4, 1, 1), None, h)
    assert torch.allclose(imp.icu(v, None), 27 * torch.arange(1.0, 5.0))
    assert torch.allclose(imp.ig(v, None), torch.full((4,), 54.0))
    assert torch.allclose(imp.og(v, None), torch.zeros(4))  # no gradient yet


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.mark.parametrize("name", imp.MEASURES)
def test_every_measure_gives_one_value_per_unit(name):
    torch.manual_seed(0)
    net = Net()
    x, y = torch.randn(6, 3), torch.tensor([0, 1, 1, 0, 1, 0])
    loss = nn.functional.cross_entropy(net(x), y)
    loss.backward()
    h = torch.relu(net.fc1(x)).detach()
    v = imp.LayerView("fc1", net.fc1, net.fc1.weight.detach(), net.fc1.weight.grad, net.fc2.weight.detach(),
                      net.fc2.weight.grad, h)
    u = imp.measure(name)(v, imp.StepView(x, y, net))
    assert u.shape == (4,) and torch.isfinite(u).all() and (u >= 0).all()


def test_feature_ablation_is_the_change_of_the_target_logit():
    torch.manual_seed(1)
    net = Net()
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 0, 1, 1])
    v = imp.LayerView("fc1", net.fc1, net.fc1.weight, None, net.fc2.weight, None, None)
    u = imp.measure("FA")(v, imp.StepView(x, y, net))
    with torch.no_grad():
        z = net(x).gather(1, y[:, None])[:, 0]
        expected = []
        for i in range(4):
            pre = net.fc1(x)
            pre[:, i] = 0
            expected.append((z - net.fc2(torch.relu(pre)).gather(1, y[:, None])[:, 0]).abs().mean())
    assert torch.allclose(u, torch.stack(expected), atol=1e-6)


def test_summing_strategies():
    hist = [torch.tensor([1.0]), torch.tensor([3.0])]
    assert SUMMING["add_latest"](hist).item() == 3.0
    assert SUMMING["add_all"](hist).item() == 4.0
    assert SUMMING["add_average"](hist).item() == 2.0


def test_fgadahat_adjustment_matches_the_formula(tiny):
    engine = Engine(tiny("hat_pmnist", "algorithm=fgadahat", "algorithm.adjustment_intensity=1e-3",
                         "algorithm.base_linear=5", "algorithm.base_mask_sparsity_reg=0.1"))
    algo = engine.algorithm
    algo.summed_importance = {"fc1": torch.linspace(0, 1, 64), "fc2": torch.linspace(1, 2, 32)}
    algo.task_id = 3
    algo.prepare_adjustment()
    algo.layer_sparsity = {"fc1": torch.tensor(0.2), "fc2": torch.tensor(0.4)}
    a = {p: m for p, m in algo.adjustment()}
    bb = algo.backbone.body
    c1, c2 = (3 + 5) * (0.2 + 0.1), (3 + 5) * (0.4 + 0.1)
    I1, I2 = algo.summed_importance["fc1"], algo.summed_importance["fc2"]
    assert a[bb.fc[0].weight][10, 3].item() == pytest.approx(1e-3 / (c1 * I1[10].item() + 1e-3), rel=1e-5)
    agg = min(I2[7].item(), I1[20].item())
    assert a[bb.fc[1].weight][7, 20].item() == pytest.approx(1e-3 / (c2 * agg + 1e-3), rel=1e-5)
    assert a[bb.fc[1].bias][7].item() == pytest.approx(1e-3 / (c2 * I2[7].item() + 1e-3), rel=1e-5)


def test_attribution_measures_see_the_model_after_the_step(tiny, one_thread, monkeypatch):
    """Captum's forward gates with the embeddings the optimizer step just updated (the reference re-runs its forward
    after the step), while the step's importance is still multiplied by the training mask of the step itself."""
    from clrepro.algorithms import fgadahat as fg
    from clrepro.algorithms.base import Batch, Step

    engine = Engine(tiny("hat_pmnist", "algorithm=fgadahat", "algorithm.importance_type=DL"))
    algo = engine.algorithm
    task = engine._task(1)
    algo.setup_task(task, 4)
    opt = torch.optim.Adam(algo.trainable_parameters(), lr=0.05)
    step = Step(1, 0, 2, 4, 0)
    algo.training_loss(Batch(task.train.x[:32], task.train.y[:32], 1), step).backward()
    algo.after_backward(step)
    opt.step()
    seen = {}
    real = fg._TaskForward.__init__

    def spy(self, backbone, head, mask):
        seen.update(mask)
        real(self, backbone, head, mask)

    monkeypatch.setattr(fg._TaskForward, "__init__", spy)
    pre = {k: v.clone() for k, v in algo._train_mask.items()}
    algo.after_optimizer_step(step)
    post = {k: v.detach() for k, v in algo.masks.gate(algo._s).items()}
    assert set(seen) == set(post)
    assert all(torch.equal(seen[k], post[k]) for k in post)
    assert any(not torch.equal(pre[k], post[k]) for k in post)  # the step moved the embeddings


@pytest.mark.parametrize("measure", ["ICU", "II"])
def test_fgadahat_accumulates_importance_over_tasks(tiny, measure):
    engine = Engine(tiny("hat_pmnist", "algorithm=fgadahat", f"algorithm.importance_type={measure}",
                         "benchmark.num_tasks=2", "trainer.epochs=1"))
    engine.run()
    algo = engine.algorithm
    assert len(algo.importance_history) == 2
    I1 = algo.importance_history[0]["fc1"]
    assert I1.shape == (64,) and (I1 >= 1e-8).all() and I1.max() <= 1 + 1e-8  # normalised, + b_I
    expected = 2 * algo.importance_history[0]["fc1"] + algo.importance_history[1]["fc1"]  # add_all
    assert torch.allclose(algo.summed_importance["fc1"], expected)


@pytest.mark.parametrize("measure", ["IG", "OG", "CU", "ICU", "AFI", "II"])
def test_protected_shortcuts_leave_the_measures_on_the_block_convs(one_thread, measure):
    """With protect_shortcuts, a downsampling block's 1x1 shortcut is protected under conv2's name; the measures
    must still read conv2's own weights (regression: the shortcut overwrote them, CU/OG crashed on the shapes)."""
    from clrepro.config.load import load_experiment

    engine = Engine(load_experiment("hat_pmnist", [
        "benchmark=pdigits", "benchmark.num_tasks=1", "algorithm=fgadahat", f"algorithm.importance_type={measure}",
        "backbone=hat_resnet18", "backbone.protect_shortcuts=true"]))
    algo, body = engine.algorithm, engine.algorithm.backbone.body
    block = body.conv3x[0]                                       # 64 → 128 channels, stride 2: a 1x1 shortcut
    assert block.shortcut is not None
    assert any(mp.param is block.shortcut.weight for mp in algo.backbone.masked_parameters())  # it is protected
    assert algo._weights["conv3x.0.conv2"] is block.conv2.weight
    assert algo._modules_of["conv3x.0.conv2"] is block.conv2
    assert algo._next["conv3x.0.conv1"] == "conv3x.0.conv2"
    task = engine._task(1)
    algo.setup_task(task, 1)
    x, y = task.train.x[:8], task.train.y[:8]
    from clrepro.algorithms.base import Batch, Step
    step = Step(1, 0, 1, 2, 0)
    loss = algo.training_loss(Batch(x, y, 1), step)
    loss.backward()
    u = algo.step_importance()
    assert all(u[l].shape == (n,) and torch.isfinite(u[l]).all() for l, n in algo.masks.layer_units.items())
    if measure == "OG":  # conv3x.0.conv1's units are the inputs of conv2 (3x3, 128 → 128), not of the shortcut
        expected = block.conv2.weight.grad.abs().transpose(0, 1).reshape(128, -1).sum(1)
        assert torch.allclose(u["conv3x.0.conv1"], expected)
    if measure == "ICU":
        w = block.conv2.weight.detach().abs().reshape(128, -1).sum(1)
        act = algo.backbone.activations["conv3x.0.conv2"].abs().transpose(0, 1).reshape(128, -1).mean(1)
        assert torch.allclose(u["conv3x.0.conv2"], w * act)


@pytest.mark.filterwarnings("ignore:max_unpooling2d:UserWarning")  # DeepLift's maxpool rule, deterministic mode
@pytest.mark.parametrize("backbone, shape", [("hat_mlp", (1, 8, 8)), ("hat_resnet18", (1, 8, 8))])
def test_deeplift_rescales_through_the_backbones_relu_modules(backbone, shape):
    """DL needs ReLU *modules* for Captum's rescale rule (the reference's nn.ReLU layers); with them LayerDeepLift
    is complete: the attributions of a layer sum to f(x) − f(baseline) for the target logit."""
    from captum.attr import LayerDeepLift

    from clrepro.backbones.mlp import MLPConfig
    from clrepro.backbones.resnet import ResNetConfig
    from clrepro.registry import BACKBONES

    torch.manual_seed(0)
    cls = BACKBONES.get(backbone)
    net = cls(shape, MLPConfig(hidden=[16, 8]) if backbone == "hat_mlp" else ResNetConfig()).eval()
    relus = [m for m in net.modules() if isinstance(m, nn.ReLU)]
    assert len(relus) == len(net.layer_names)  # one per masked layer, none reused
    head = nn.Linear(net.output_dim, 3)
    mask = {l: torch.rand(n) for l, n in net.hat.layer_units.items()}

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.net, self.head = net, head

        def forward(self, x):
            return self.head(self.net(x, mask=mask))

    model, x = Model(), torch.randn(4, *shape)
    layer = net.body.fc[0] if backbone == "hat_mlp" else net.body.conv1
    attr, delta = LayerDeepLift(model, layer).attribute(x, target=1, return_convergence_delta=True)
    assert attr.shape[1] == net.hat.layer_units[net.layer_names[0]]
    assert delta.abs().max() < 1e-4
