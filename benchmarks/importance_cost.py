"""Per-step cost of each FG-AdaHAT neuron-importance measure relative to HAT's step.

Usage: python benchmarks/importance_cost.py [--tasks 2] [key=value ...]
Trains embedded Permuted MNIST (2 tasks, 56 steps each) with HAT, AdaHAT and FG-AdaHAT under every
measure, and prints ms per training step and the ratio to HAT's step.
"""

from __future__ import annotations

import argparse

from clrepro.algorithms.importance import MEASURES
from clrepro.config.load import load_experiment
from clrepro.engine.loop import run


def step_ms(experiment: str, overrides: list[str]) -> float:
    result = run(load_experiment(experiment, [*overrides, "metrics=[AA]"]))
    return 1000 * result.train_seconds / result.steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=2)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    common = [f"benchmark.num_tasks={args.tasks}", *args.overrides]
    step_ms("hat_pmnist", common)  # warm-up: imports, data
    hat = step_ms("hat_pmnist", common)
    rows = [("HAT", hat), ("AdaHAT", step_ms("adahat_pmnist", common))]
    rows += [(f"FG-AdaHAT ({m})", step_ms("fgadahat_pmnist", [*common, f"algorithm.importance_type={m}"]))
             for m in MEASURES]
    print(f"{'algorithm':18s} {'ms/step':>8s} {'× HAT':>7s}")
    for name, ms in rows:
        print(f"{name:18s} {ms:8.2f} {ms / hat:7.2f}")


if __name__ == "__main__":
    main()
