"""Fractional-GPU packing: the same 8 HAT trials at resources.gpu 0.125 (8 at once) against gpu 1 (one at a time).

Usage: python benchmarks/gpu_packing.py [--trials 8]   (needs a CUDA device; each trial takes 2 CPUs)
Writes two sweep files into a temporary folder, runs `clrepro sweep` on each as a whole process, and prints the
throughput ratio (trials per second packed / sequential; target >= 6x) and where each trial ran.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def sweep_file(folder: Path, name: str, trials: int, gpu: float, concurrent: int) -> Path:
    spec = {"name": name, "experiment": {"name": "hat_pmnist", "overrides": ["metrics=[AA,BWT]"]},
            "search_space": {"optimizer.lr": {"type": "float", "low": 0.003, "high": 0.03, "log": True}},
            "objective": {"metric": "AA", "mode": "max"}, "metrics": ["AA", "BWT"],
            "seeds": {"tune": [1], "report": [101]}, "num_samples": trials, "max_concurrent_trials": concurrent,
            "resources": {"cpu": 2, "gpu": gpu}, "scheduler": {"name": "none"},
            "sampler": {"name": "random", "seed": 0}, "final": {"top_k": 0},
            "storage": {"tracking_uri": f"sqlite:///{folder}/mlflow.db", "tune_path": str(folder / "ray")}}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def run(path: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run([str(Path(sys.executable).parent / "clrepro"), "sweep", str(path), "--quiet"], cwd=path.parent,
                   check=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=8)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        packed = run(sweep_file(folder, "packed", args.trials, 1 / args.trials, args.trials))
        sequential = run(sweep_file(folder, "sequential", args.trials, 1.0, 1))
    print(f"{args.trials} trials: packed (gpu {1 / args.trials:g} each) {packed:.1f} s, "
          f"one at a time (gpu 1) {sequential:.1f} s: throughput {sequential / packed:.2f}x (target >= 6x)")


if __name__ == "__main__":
    main()
