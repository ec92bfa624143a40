"""Time clrepro's HAT run against a raw PyTorch loop over the same masked model, data and steps.

Usage: python benchmarks/hat_step_overhead.py [--repeats 3] [key=value ...]
Prints per-step milliseconds of both and their ratio (target ≤ 1.2x), and the main run's wall time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from clrepro.backbones.masks import anneal_scale, parameter_wise
from clrepro.config.load import load_experiment
from clrepro.engine.loop import Engine


def raw_loop(engine: Engine) -> tuple[float, int]:
    """HAT written as one plain loop (same model class, data, batches, optimizer); returns (seconds, steps)."""
    algo = engine.algorithm
    backbone, heads, masks, cfg = algo.backbone, algo.heads, algo.backbone.hat, algo.cfg
    bs, epochs = engine.cfg.trainer.batch_size, engine.cfg.trainer.epochs
    steps, seconds = 0, 0.0
    for t in range(1, engine.num_tasks + 1):
        task = engine.benchmark.task(t)
        x, y = task.train.x.to(engine.device), task.train.y.to(engine.device)
        heads.add_task(t, task.num_classes)
        algo.to(engine.device)
        masks.reset_embeddings("N01")
        used = masks.cumulative()
        free = {l: 1 - m for l, m in used.items()}
        den = sum(float(f.sum()) for f in free.values())
        P = parameter_wise(backbone.masked_parameters(), used, "min")
        params = dict(backbone.named_parameters())
        protect = [(params[n], 1 - p) for n, p in P.items()]
        opt = torch.optim.Adam(algo.parameters(), lr=engine.cfg.optimizer.lr)
        nb = len(y) // bs
        t0 = time.perf_counter()
        for _ in range(epochs):
            order = torch.randperm(len(y)).to(engine.device)
            for b in range(nb):
                idx = order[b * bs:(b + 1) * bs]
                s = anneal_scale(b, nb, cfg.s_max, True)
                m = {l: torch.sigmoid(s * masks.embedding(l)) for l in masks.layers}
                logits = heads(backbone(x[idx], m), t)
                reg = sum((m[l] * free[l]).sum() for l in m) / den
                loss = F.cross_entropy(logits, y[idx]) + cfg.mask_sparsity_reg_factor * reg
                opt.zero_grad(set_to_none=True)
                loss.backward()
                with torch.no_grad():
                    for p, a in protect:
                        p.grad.mul_(a)
                    for e in masks.embeddings.values():
                        e.grad.mul_((cfg.s_max / s) * (torch.cosh(torch.clamp(s * e, -50, 50)) + 1) / (torch.cosh(e) + 1))
                opt.step()
                steps += 1
        if engine.device.type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - t0
        masks.store(t)
    return seconds, steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--experiment", default="hat_pmnist")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    clrepro_ms, raw_ms, walls = [], [], []
    for r in range(args.repeats):
        cfg = load_experiment(args.experiment, [*args.overrides, "metrics=[AA,BWT]"])
        engine = Engine(cfg, seed=cfg.seed)
        engine.benchmark.task(1)  # warm the source cache for both loops
        result = engine.run()
        clrepro_ms.append(1000 * result.train_seconds / result.steps)
        walls.append(result.wall_seconds)
        seconds, steps = raw_loop(Engine(cfg, seed=cfg.seed))
        raw_ms.append(1000 * seconds / steps)
    c, w = statistics.median(clrepro_ms), statistics.median(raw_ms)
    print(f"experiment {args.experiment}: {result.steps} steps, {torch.get_num_threads()} threads")
    print(f"clrepro HAT fit (incl. per-epoch validation): {c:.2f} ms/step")
    print(f"raw PyTorch loop, same model/data/steps:      {w:.2f} ms/step")
    print(f"ratio: {c / w:.2f}x   (target <= 1.2x)")
    print(f"main run wall time (train + test after each task): {statistics.median(walls):.2f} s")


if __name__ == "__main__":
    main()
