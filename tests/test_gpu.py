"""CUDA runs: every algorithm trains on the GPU, matches its CPU run, and mixed precision runs (skipped without CUDA)."""

from __future__ import annotations

import numpy as np
import pytest

from clrepro.config.load import load_experiment
from clrepro.engine.experiment import run_experiment
from clrepro.engine.loop import run

TINY = ["benchmark=pdigits", "benchmark.num_tasks=3", "backbone.hidden=[64,32]", "trainer.epochs=2",
        "trainer.batch_size=32", "metrics=[AA,BWT]"]
# (experiment, overrides) for every registered algorithm
CASES = {
    "finetuning": ("finetuning_pmnist", []), "lwf": ("lwf_pmnist", []), "ewc": ("finetuning_pmnist", ["algorithm=ewc"]),
    "online_ewc": ("finetuning_pmnist", ["algorithm=online_ewc"]), "si": ("finetuning_pmnist", ["algorithm=si"]),
    "der": ("finetuning_pmnist", ["algorithm=der"]), "derpp": ("finetuning_pmnist", ["algorithm=derpp"]),
    "flashback": ("flashback/pmnist_embedded", []), "independent": ("finetuning_pmnist", ["algorithm=independent"]),
    "joint": ("finetuning_pmnist", ["algorithm=joint"]), "random": ("finetuning_pmnist", ["algorithm=random"]),
    "fix": ("finetuning_pmnist", ["algorithm=fix"]), "hat": ("hat_pmnist", []), "adahat": ("adahat_pmnist", []),
    "fgadahat": ("fgadahat_pmnist", []), "fgadahat_dl": ("fgadahat_pmnist", ["algorithm.importance_type=DL"]),
    "amnesiac_hat": ("unlearning/amnesiac_hat_pmnist5", ["benchmark.num_tasks=3", "~unlearning.requests",
                                                         "+unlearning.requests={2: [1]}"]),
    "clpu_derpp": ("unlearning/baseline_pmnist5", ["algorithm=clpu_derpp", "~unlearning.requests",
                                                   "+unlearning.requests={2: [1]}"]),
}


def _overrides(experiment: str, overrides: list[str]) -> list[str]:
    common = [*TINY, *overrides]
    if experiment.startswith("unlearning/"):
        common = [o for o in common if not o.startswith("metrics=")] + ["metrics=[AA,AA_remaining]"]
    return common


def test_every_registered_algorithm_has_a_valid_gpu_case():
    """Runs without CUDA: the GPU cases cover every algorithm and their configs validate for cuda."""
    from clrepro.registry import ALGORITHMS

    covered = {n.removesuffix("_dl") for n in CASES}
    assert set(ALGORITHMS.names()) <= covered, set(ALGORITHMS.names()) - covered
    for experiment, overrides in CASES.values():
        cfg = load_experiment(experiment, [*_overrides(experiment, overrides), "trainer.accelerator=cuda"])
        assert cfg.trainer.accelerator == "cuda"


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(CASES))
def test_algorithm_runs_on_cuda_like_on_cpu(name):
    experiment, overrides = CASES[name]
    common = _overrides(experiment, overrides)
    cpu = run(load_experiment(experiment, [*common, "trainer.accelerator=cpu"]))
    gpu = run(load_experiment(experiment, [*common, "trainer.accelerator=cuda"]))
    assert gpu.device.startswith("cuda")
    assert np.isfinite(gpu.acc[~np.isnan(gpu.acc)]).all()
    # Different kernels: the matrices agree to a few test samples, not bit for bit.
    assert np.nanmax(np.abs(gpu.acc - cpu.acc)) < 0.05, (cpu.acc, gpu.acc)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_runs_through_fabric(precision):
    result = run_experiment(load_experiment("hat_pmnist", [*TINY, "trainer.accelerator=cuda",
                                                          f"trainer.precision={precision}"]))
    assert np.isfinite(result.metrics["AA"]) and result.metrics["AA"] > 0.5
