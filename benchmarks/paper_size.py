"""HAT on Permuted MNIST at the paper's size (20 tasks x 60,000 images, synthetic: the embedded set tiled), timed.

Usage: python benchmarks/paper_size.py [--device cpu|cuda] [--tasks 20] [--epochs 2] [--raw-tasks 2]
Runs clrepro's engine (train + validation + test after each task) and the raw PyTorch loop of
hat_step_overhead.py on the same device, model and data, and prints per-step times and their ratio.
The raw floor runs the first --raw-tasks tasks only (the per-step cost does not depend on the task).
"""

from __future__ import annotations

import argparse
import time

import torch

from clrepro.config.load import load_experiment
from clrepro.engine.loop import Engine

from hat_step_overhead import raw_loop


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--tasks", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--raw-tasks", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    common = ["benchmark.source=mnist_embedded_paper_size", f"benchmark.num_tasks={args.tasks}",
              f"trainer.epochs={args.epochs}", "optimizer.lr=0.001", "metrics=[AA,BWT]",
              f"trainer.accelerator={args.device}"]
    cfg = load_experiment("hat_pmnist", common)
    t0 = time.perf_counter()
    engine = Engine(cfg, seed=1)
    result = engine.run()
    wall = time.perf_counter() - t0
    raw_cfg = load_experiment("hat_pmnist", [*common, f"benchmark.num_tasks={args.raw_tasks}"])
    seconds, steps = raw_loop(Engine(raw_cfg, seed=1))
    c, r = 1000 * result.train_seconds / result.steps, 1000 * seconds / steps
    print(f"HAT, PMNIST-{args.tasks} at paper size (SYNTHETIC: embedded images tiled to 54,000/6,000/10,000 per task), "
          f"{args.epochs} epochs, batch 128, {result.steps} steps on {result.device}, {torch.get_num_threads()} threads")
    print(f"  clrepro run: {wall:.1f} s wall (train {result.train_seconds:.1f} s, test {result.eval_seconds:.1f} s); "
          f"AA {float(result.acc[-1][~torch.isnan(torch.tensor(result.acc[-1])).numpy()].mean()):.4f}")
    print(f"  per training step: clrepro {c:.2f} ms (incl. per-epoch validation) vs raw loop {r:.2f} ms: {c / r:.2f}x")


if __name__ == "__main__":
    main()
