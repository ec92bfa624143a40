"""Measure sweep efficiency: the share of wall time × slots spent in trial training and evaluation.

Usage: python benchmarks/sweep_efficiency.py [SWEEP_FILE] (default sweeps/quickstart.yaml)
Runs the sweep in a fresh temporary folder (its own MLflow store and Tune storage) and prints the wall
time, the engine's training + evaluation time, the time inside trial functions, and both shares.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from clrepro.sweep.runner import run_sweep


def main() -> None:
    spec = Path(sys.argv[1] if len(sys.argv) > 1 else "sweeps/quickstart.yaml").resolve()
    with tempfile.TemporaryDirectory() as d:
        os.chdir(d)
        o = run_sweep(spec, tracking_uri=f"sqlite:///{d}/mlflow.db", tune_path=f"{d}/ray_results", progress=False)
    done = sum(t.status == "DONE" for t in o.trials)
    print(f"sweep {spec.name}: {len(o.trials)} search trials ({done} done) + final group, {o.slots} slots, "
          f"{os.cpu_count()} CPUs")
    print(f"wall time:                         {o.wall_seconds:7.1f} s")
    print(f"engine training + evaluation:      {o.engine_seconds:7.1f} s  -> efficiency {100 * o.efficiency:5.1f}%"
          "  (target >= 75%)")
    print(f"inside trial functions (+ logging): {o.trial_seconds:6.1f} s  -> occupancy  {100 * o.occupancy:5.1f}%")


if __name__ == "__main__":
    main()
