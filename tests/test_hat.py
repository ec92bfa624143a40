"""HAT: protected weights never move, anneal parity (B1), masks, sparsity regulariser, capacity."""

from __future__ import annotations

import pytest
import torch

from clrepro.algorithms.hat import mask_sparsity, free_units
from clrepro.backbones.masks import anneal_scale
from clrepro.engine.loop import Engine


def test_anneal_reproduces_off_by_one_and_fix():
    # B1: batch 0 gets a negative scale and the last batch stays below s_max (s_max=400, B=422).
    assert anneal_scale(0, 422, 400.0) == pytest.approx(1 / 400 - (400 - 1 / 400) / 421)
    assert anneal_scale(0, 422, 400.0) == pytest.approx(-0.948, abs=1e-3)
    assert anneal_scale(1, 422, 400.0) == pytest.approx(1 / 400)
    assert anneal_scale(421, 422, 400.0) == pytest.approx(399.05, abs=0.01)
    # the fix starts at 1/s_max and reaches s_max
    assert anneal_scale(0, 422, 400.0, offset_parity=False) == pytest.approx(1 / 400)
    assert anneal_scale(421, 422, 400.0, offset_parity=False) == pytest.approx(400.0)
    assert anneal_scale(0, 1, 400.0) == 400.0  # B = 1 divides by zero in the reference


def test_mask_sparsity_on_hand_values():
    used = {"a": torch.tensor([1.0, 0.0, 0.0] + [0.0] * 10), "b": torch.tensor([1.0] * 5)}
    mask = {"a": torch.tensor([0.9, 0.5, 0.1] + [0.0] * 10), "b": torch.tensor([0.3] * 5)}
    free, count = free_units(used)
    total, per_layer = mask_sparsity(mask, free, count)
    # free units: layer a has 12 (of which two carry 0.5 and 0.1), layer b has none
    assert per_layer["a"].item() == pytest.approx(0.6 / 12)
    assert per_layer["b"].item() == 0.0  # ≤ 10 free units → 0
    assert total.item() == pytest.approx(0.6 / 12)


def test_hat_never_moves_a_fully_protected_weight(tiny):
    cfg = tiny("hat_pmnist")
    engine = Engine(cfg)
    algo, backbone = engine.algorithm, engine.algorithm.backbone
    snapshots = {}

    class Snapshot:
        def on_task_start(self, task_id, **kw):
            if task_id == 2:
                snapshots.update({n: p.detach().clone() for n, p in backbone.named_parameters()})

    engine.fabric._callbacks.append(Snapshot())
    result = engine.run()
    used = algo.masks.cumulative(tasks=[1])  # units task 1's mask owns
    checked = 0
    for mp in backbone.masked_parameters():
        before, after = snapshots[mp.name], dict(backbone.named_parameters())[mp.name].detach()
        rows = used[mp.layer].bool()
        if mp.kind == "bias" or mp.prev is None:
            protected = rows.view(-1, *([1] * (before.dim() - 1))).expand_as(before)
        else:
            protected = rows[:, None] & used[mp.prev].bool()[None, :]
        assert protected.any()
        assert torch.equal(after[protected], before[protected]), mp.name  # bit for bit
        assert not torch.equal(after[~protected], before[~protected]), mp.name  # the rest did train
        checked += int(protected.sum())
    assert checked > 100
    assert abs(result.acc[-1, 0] - result.acc[0, 0]) == 0.0  # task 1's accuracy cannot change


def test_hat_stores_binary_masks_and_reports_capacity(tiny, tmp_path):
    engine = Engine(tiny("hat_pmnist"))
    result = engine.run()
    masks = engine.algorithm.masks
    assert sorted(masks.task_masks) == [1, 2, 3]
    for m in masks.task_masks[2].values():
        assert set(m.unique().tolist()) <= {0.0, 1.0}
    caps = [e["mask_capacity/all"] for e in result.task_extras]
    assert caps == sorted(caps) and 0 < caps[0] <= caps[-1] <= 1  # capacity only grows
    from clrepro.tracking.plots import mask_capacity

    assert mask_capacity(result.task_extras, tmp_path / "cap.png").stat().st_size > 1000


def test_hat_const_1_is_unprotected_and_forgets(tiny):
    protected = Engine(tiny("hat_pmnist")).run()
    free = Engine(tiny("hat_pmnist", "algorithm.adjustment_mode=hat_const_1")).run()
    assert protected.acc[-1, 0] == protected.acc[0, 0]
    assert free.acc[-1, 0] != free.acc[0, 0]


def test_original_hat_safeguards_clamp_embeddings(tiny):
    engine = Engine(tiny("hat_pmnist", "algorithm.original_hat_safeguards=true", "optimizer.lr=0.5"))
    engine.run()
    for e in engine.algorithm.masks.embeddings.values():
        assert e.abs().max() <= 6.0


def test_network_capacity_is_the_mean_adjustment_rate(tiny, one_thread, tmp_path):
    """The reference's network capacity (mean of a over every masked parameter) beside the mask capacity."""
    engine = Engine(tiny("hat_pmnist", "benchmark.num_tasks=2"))
    result = engine.run()
    first, second = result.task_extras
    assert first["network_capacity"] == 1.0 and first["network_capacity/end"] == 1.0  # nothing protected yet
    M = engine.algorithm.masks.task_masks[1]
    P = [M["fc1"][:, None].expand(64, 64), M["fc1"],                          # weights (out, in) and biases
         torch.minimum(M["fc2"][:, None], M["fc1"][None, :]), M["fc2"]]
    expected = sum(float((1 - p).sum()) for p in P) / sum(p.numel() for p in P)
    assert second["network_capacity"] == pytest.approx(expected, rel=1e-6)      # a = 1 − P, fixed over the task
    assert second["network_capacity/end"] == pytest.approx(expected, rel=1e-6)
    assert expected < 1 and second["mask_capacity/all"] > 0                      # two different quantities
    from clrepro.tracking.plots import network_capacity

    assert network_capacity(result.task_extras, tmp_path / "net.png").stat().st_size > 1000
