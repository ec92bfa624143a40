"""The shipped embedded experiments: HAT keeps |BWT| ≤ 0.01 and beats Finetuning's AA (same data, seed)."""

from __future__ import annotations

import numpy as np

from clrepro.config.load import load_experiment
from clrepro.engine.loop import run
from clrepro.metrics.cl import compute_cl_metrics


def test_hat_pmnist_beats_finetuning_without_forgetting():
    hat = compute_cl_metrics(run(load_experiment("hat_pmnist", ["metrics=[AA,BWT]"])).acc)
    ft = compute_cl_metrics(run(load_experiment("finetuning_pmnist", ["metrics=[AA,BWT]"])).acc)
    assert abs(hat["BWT"]) <= 0.01
    assert hat["AA"] > ft["AA"]
    assert ft["BWT"] < -0.05  # finetuning does forget on this benchmark
    assert np.isfinite(hat["AA"])
