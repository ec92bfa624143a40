"""CUL metrics (docs/unlearning.md): distances, DD/AG batch weighting, scopes, AA_all/AA_remaining."""

import json
import math

import numpy as np
import pytest
import torch

from clrepro.errors import ConfigError, UserError
from clrepro.metrics.cul import (DISTANCES, accuracy_gain, cosine, cul_metrics, distribution_distance, euclidean,
                                 linear_cka, manhattan, read_metric_csv, scope_tasks, write_cul_csv)

nan = np.nan
approx = pytest.approx


def _features(n=10, d=4, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("name", sorted(DISTANCES))
def test_identical_features_have_distance_zero(name):
    x = _features()
    assert float(DISTANCES[name](x, x.clone())) == approx(0.0, abs=1e-6)
    assert distribution_distance(x, x.clone(), batch_size=4, distance=name) == approx(0.0, abs=1e-6)


def test_linear_cka_hand_3x2():
    # X = [[0,0],[1,0],[2,3]], column means (1,1) -> X~ = [[-1,-1],[0,-1],[1,2]]
    # Y = [[1,2],[0,0],[2,1]], column means (1,1) -> Y~ = [[0,1],[-1,-1],[1,0]]
    # X~^T Y~ = [[1,-1],[3,0]]   -> ||.||_F^2 = 1 + 1 + 9 + 0 = 11
    # X~^T X~ = [[2,3],[3,6]]    -> ||.||_F = sqrt(4 + 9 + 9 + 36) = sqrt(58)
    # Y~^T Y~ = [[2,1],[1,2]]    -> ||.||_F = sqrt(4 + 1 + 1 + 4) = sqrt(10)
    # d = 1 - 11 / sqrt(580) = 1 - 0.4567501... = 0.5432498...
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 3.0]], dtype=torch.float64)
    y = torch.tensor([[1.0, 2.0], [0.0, 0.0], [2.0, 1.0]], dtype=torch.float64)
    assert float(linear_cka(x, y)) == approx(1 - 11 / math.sqrt(580), abs=1e-9)
    assert float(linear_cka(y, x)) == approx(1 - 11 / math.sqrt(580), abs=1e-9)  # symmetric


def test_linear_cka_invariant_to_orthogonal_and_isotropic_scaling():
    x = _features(12, 4, seed=1)
    q, _ = torch.linalg.qr(_features(4, 4, seed=2))      # an orthogonal 4x4 matrix
    assert q.T @ q == approx(torch.eye(4, dtype=torch.float64), abs=1e-12)
    assert float(linear_cka(x, 3.0 * x @ q)) == approx(0.0, abs=1e-9)
    assert float(linear_cka(x, x + 5.0)) == approx(0.0, abs=1e-9)  # centring removes a shift
    # ... but not to anisotropic scaling, which changes the distance
    assert float(linear_cka(x, x * torch.tensor([1.0, 1.0, 1.0, 10.0], dtype=torch.float64))) > 0.01


def test_linear_cka_one_sample_batch_is_distance_one():
    # a single sample centres to zero: 1 - 0 / (0 + 1e-12) = 1 (the reference's formula, kept as is)
    assert float(linear_cka(torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 2.0]]))) == 1.0


def test_per_sample_distances_on_hand_values():
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    y = torch.tensor([[3.0, 4.0], [1.0, 1.0]])
    assert float(euclidean(x, y)) == approx(2.5)   # (5 + 0) / 2
    assert float(manhattan(x, y)) == approx(3.5)   # (7 + 0) / 2
    # cos((1,0),(0,1)) = 0, cos((1,1),(2,2)) = 1 -> 1 - (0 + 1)/2
    assert float(cosine(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([[0.0, 1.0], [2.0, 2.0]]))) == approx(0.5)


def test_dd_weights_batches_equally():
    # batch_size 2, 3 samples -> batches {1,2} and {3}: (|2-0| + |0-0|)/2 = 1 and |8-0| = 8 -> (1 + 8)/2 = 4.5
    # (a sample-weighted mean would be 10/3)
    x = torch.zeros(3, 1)
    y = torch.tensor([[2.0], [0.0], [8.0]])
    assert distribution_distance(x, y, batch_size=2, distance="euclidean") == approx(4.5)
    assert distribution_distance(x, y, batch_size=3, distance="euclidean") == approx(10 / 3)
    # CKA, first batch x = [[0,0],[1,0]] vs y = [[0,0],[0,1]]: X~ = [[-.5,0],[.5,0]], Y~ = [[0,-.5],[0,.5]]
    # X~^T Y~ = [[0,.5],[0,0]] -> 0.25; ||X~^T X~||_F = ||Y~^T Y~||_F = 0.5 -> d = 1 - 0.25/0.25 = 0
    # second batch is one sample -> d = 1; DD = (0 + 1)/2 (a sample-weighted mean would give 1/3)
    xc = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 3.0]], dtype=torch.float64)
    yc = torch.tensor([[0.0, 0.0], [0.0, 1.0], [5.0, 1.0]], dtype=torch.float64)
    assert distribution_distance(xc, yc, batch_size=2) == approx(0.5, abs=1e-9)


def test_dd_rejects_bad_input():
    x = _features(4, 2)
    with pytest.raises(ConfigError, match="distance"):
        distribution_distance(x, x, 2, distance="kl")
    with pytest.raises(ConfigError, match="batch_size"):
        distribution_distance(x, x, 0)
    with pytest.raises(UserError, match="same n samples"):
        distribution_distance(x, x[:3], 2)


def test_accuracy_gain_per_batch():
    # batch_size 2: batch 1: 2/2 - 1/2 = 0.5; batch 2: 0/1 - 0/1 = 0 -> AG = 0.25 (sample-weighted: 1/3)
    assert accuracy_gain(torch.tensor([True, True, False]), torch.tensor([True, False, False]), 2) == approx(0.25)
    assert accuracy_gain([1, 1, 0], [1, 0, 0], 3) == approx(1 / 3)
    # batch_size 2 over 5 samples: (1 - 0) + (0.5 - 1) + (0 - 1) -> (1 - 0.5 - 1)/3
    assert accuracy_gain([1, 1, 1, 0, 0], [0, 0, 1, 1, 1], 2) == approx(-0.5 / 3)


def test_scope_tasks():
    assert scope_tasks("all", [1, 2, 3], {1}) == [1, 2, 3]
    assert scope_tasks("remaining", [1, 2, 3], {1}) == [2, 3]
    assert scope_tasks("unlearned", [1, 2, 3], {1, 5}) == [1]          # E ∩ U
    assert scope_tasks("unlearned", [1, 2, 3], set()) == []
    assert scope_tasks("unlearned", [1, 2, 3], set(), fallback=True) == [1, 2, 3]
    with pytest.raises(ConfigError, match="allowed: all, remaining, unlearned"):
        scope_tasks("seen", [1], set())


# acc[N-1, t-1] = a_{t,N}; the last row is [0.6, 0.5, 0.9]
ACC = np.array([[0.9, nan, nan],
                [0.7, 0.8, nan],
                [0.6, 0.5, 0.9]])
DD = {1: 0.2, 2: 0.4, 3: 0.6}
AG = {1: 0.3, 2: 0.1, 3: -0.05}


def test_cul_metrics_defaults_one_unlearned_task():
    m = cul_metrics(DD, AG, ACC, unlearned={1}, distance="linear_cka", batch_size=128)
    assert m["DD"] == approx(0.2)                      # scope unlearned = {1}
    assert m["AGR"] == approx((0.1 - 0.05) / 2)        # scope remaining = {2, 3}; the unlearned 0.3 is excluded
    assert m["AA_all"] == approx((0.6 + 0.5 + 0.9) / 3)
    assert m["AA_remaining"] == approx((0.5 + 0.9) / 2)
    assert (m["dd_tasks"], m["ag_tasks"], m["dd_scope_used"]) == ([1], [2, 3], "unlearned")
    assert (m["distance"], m["batch_size"], m["unlearned"]) == ("linear_cka", 128, [1])
    json.dumps(m)


def test_cul_metrics_other_scopes():
    m = cul_metrics(DD, AG, ACC, unlearned={1, 3}, dd_scope="all", ag_scope="unlearned")
    assert m["DD"] == approx(0.4)
    assert m["AGR"] == approx((0.3 - 0.05) / 2)
    assert m["AA_remaining"] == approx(0.5)


def test_no_unlearning_dd_falls_back_to_all_tasks():
    m = cul_metrics(DD, AG, ACC, unlearned=set())
    assert m["DD"] == approx(0.4)
    assert (m["dd_scope"], m["dd_scope_used"], m["dd_tasks"]) == ("unlearned", "all", [1, 2, 3])
    assert m["AGR"] == approx((0.3 + 0.1 - 0.05) / 3)   # remaining = all tasks
    assert m["AA_remaining"] == approx(m["AA_all"])


def test_every_task_unlearned_gives_nan_agr():
    m = cul_metrics(DD, AG, ACC, unlearned={1, 2, 3})
    assert m["DD"] == approx(0.4)
    assert math.isnan(m["AGR"]) and m["ag_tasks"] == []
    assert math.isnan(m["AA_remaining"])
    assert m["AA_all"] == approx(2 / 3)


def test_no_original_reference_gives_nan_agr():
    m = cul_metrics(DD, None, ACC, unlearned={1})
    assert math.isnan(m["AGR"]) and m["ag_per_task"] is None
    assert m["DD"] == approx(0.2)


def test_cul_metrics_rejects_missing_scope_task():
    with pytest.raises(UserError, match=r"DD: no value for task\(s\) \[2\]"):
        cul_metrics({1: 0.1}, None, ACC, unlearned={2})
    with pytest.raises(UserError, match="1..3"):
        cul_metrics({4: 0.1}, None, ACC, unlearned={1})


def test_csv_round_trip(tmp_path):
    m = cul_metrics({1: 0.2, 2: nan, 3: 0.6}, AG, ACC, unlearned=set())
    write_cul_csv(tmp_path / "results", m)
    lines = (tmp_path / "results" / "dd.csv").read_text().splitlines()
    assert lines == ["task,dd", "1,0.2", "2,", "3,0.6", "average_dd_all,"]   # fallback -> named "all"; NaN -> empty
    metric, per_task, scope, average = read_metric_csv(tmp_path / "results" / "ag.csv")
    assert (metric, scope) == ("ag", "remaining")
    assert per_task == approx(AG) and average == approx(0.35 / 3)
    metric, per_task, scope, average = read_metric_csv(tmp_path / "results" / "dd.csv")
    assert math.isnan(per_task[2]) and math.isnan(average)


def test_no_ag_csv_without_original_reference(tmp_path):
    write_cul_csv(tmp_path, cul_metrics(DD, None, ACC, unlearned={1}))
    assert (tmp_path / "dd.csv").read_text().splitlines()[-1] == "average_dd_unlearned,0.2"
    assert not (tmp_path / "ag.csv").exists()


def test_read_metric_csv_rejects_malformed(tmp_path):
    path = tmp_path / "dd.csv"
    path.write_text("task,dd\n1,0.2\n")
    with pytest.raises(UserError, match="missing the final average_dd_<scope> row"):
        read_metric_csv(path)
    path.write_text("task,dd\n1,abc\naverage_dd_all,0.2\n")
    with pytest.raises(UserError, match="non-numeric"):
        read_metric_csv(path)
    path.write_text("task,acc\n1,0.2\n")
    with pytest.raises(UserError, match="expected columns"):
        read_metric_csv(path)
