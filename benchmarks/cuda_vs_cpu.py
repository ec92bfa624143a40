"""A short HAT run on CUDA and on CPU: the same accuracy matrix up to float tolerance (needs a CUDA device)."""

from __future__ import annotations

import sys

import numpy as np

from clrepro.config.load import load_experiment
from clrepro.engine.loop import run

TOLERANCE = 0.01  # different kernels can flip a few of the 1,000 test predictions per task


def main() -> int:
    common = ["trainer.epochs=1", "metrics=[AA,BWT]"]
    cpu = run(load_experiment("hat_pmnist", [*common, "trainer.accelerator=cpu"])).acc
    gpu = run(load_experiment("hat_pmnist", [*common, "trainer.accelerator=cuda"])).acc
    diff = float(np.nanmax(np.abs(cpu - gpu)))
    print(f"HAT, embedded PMNIST-5, 1 epoch: max |a_cuda - a_cpu| over the matrix = {diff:.4f} "
          f"(tolerance {TOLERANCE}); AA cpu {np.nanmean(cpu[-1]):.4f}, cuda {np.nanmean(gpu[-1]):.4f}")
    return 0 if diff <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
