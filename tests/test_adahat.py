"""AdaHAT: the adjustment equals a = r_l / (min(S_i, S_j) + r_l) on a hand-set summative mask, and its ablations."""

from __future__ import annotations

import pytest
import torch

from clrepro.data.task import Split, Task
from clrepro.engine.loop import Engine


def setup_with_hand_masks(tiny, mode: str):
    engine = Engine(tiny("hat_pmnist", "algorithm=adahat", f"algorithm.adjustment_mode={mode}",
                         "algorithm.adjustment_intensity=1e-3", "algorithm.epsilon=0.1"))
    algo = engine.algorithm
    units = algo.masks.layer_units  # fc1: 64, fc2: 32
    m1 = {"fc1": torch.zeros(units["fc1"]), "fc2": torch.zeros(units["fc2"])}
    m2 = {"fc1": torch.zeros(units["fc1"]), "fc2": torch.zeros(units["fc2"])}
    m1["fc1"][:3] = 1; m2["fc1"][:2] = 1   # S_fc1 = [2, 2, 1, 0, ...]
    m1["fc2"][:1] = 1; m2["fc2"][:1] = 1   # S_fc2 = [2, 0, ...]
    algo.masks.store(1, m1)
    algo.masks.store(2, m2)
    x = torch.zeros(4, 1, 8, 8)
    task = Task(3, 10, Split(x, torch.zeros(4, dtype=torch.long)), Split(x, torch.zeros(4, dtype=torch.long)),
                Split(x, torch.zeros(4, dtype=torch.long)))
    algo.setup_task(task, num_batches=1)
    algo.layer_sparsity = {"fc1": torch.tensor(0.4), "fc2": torch.tensor(0.15)}
    a = {p: mult for p, mult in algo.adjustment()}
    bb = algo.backbone.body
    return a, bb


def test_adahat_adjustment_matches_the_formula(tiny):
    a, bb = setup_with_hand_masks(tiny, "adahat")
    r1, r2 = 1e-3 / (0.1 + 0.4), 1e-3 / (0.1 + 0.15)
    w1, w2, b2 = a[bb.fc[0].weight], a[bb.fc[1].weight], a[bb.fc[1].bias]
    # first layer: S_{1,i}, whatever the input
    assert w1[0, 5].item() == pytest.approx(r1 / (2 + r1))
    assert w1[2, 0].item() == pytest.approx(r1 / (1 + r1))
    assert w1[10, 0].item() == pytest.approx(1.0)  # unused by earlier tasks: no protection
    # second layer: min(S_{2,i}, S_{1,j})
    assert w2[0, 0].item() == pytest.approx(r2 / (2 + r2))   # min(2, 2)
    assert w2[0, 2].item() == pytest.approx(r2 / (1 + r2))   # min(2, 1)
    assert w2[0, 7].item() == pytest.approx(1.0)             # min(2, 0)
    assert w2[5, 0].item() == pytest.approx(1.0)             # min(0, 2)
    assert b2[0].item() == pytest.approx(r2 / (2 + r2)) and b2[1].item() == pytest.approx(1.0)


def test_adahat_ablations(tiny):
    a, bb = setup_with_hand_masks(tiny, "adahat_no_sum")
    r1 = 1e-3 / (0.1 + 0.4)
    assert torch.allclose(a[bb.fc[0].weight], torch.full_like(bb.fc[0].weight, r1 / (3 + r1)))  # t = 3 everywhere
    a, bb = setup_with_hand_masks(tiny, "adahat_no_reg")
    r = 1e-3 / 0.1  # R_l dropped
    assert a[bb.fc[1].weight][0, 0].item() == pytest.approx(r / (2 + r))


def test_adahat_trains_and_runs_end_to_end(tiny):
    result = Engine(tiny("hat_pmnist", "algorithm=adahat")).run()
    assert result.acc[-1, -1] > 0.5
