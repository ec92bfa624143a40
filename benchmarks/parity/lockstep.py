"""Lockstep parity, clrepro's side: record a run's initial weights, batch order and per-epoch weights for a peer to replay.

    .venv/bin/python benchmarks/parity/lockstep.py --pairs pairs/clarena.yaml --pair adahat --seed 1 --out DIR

A seeded pair compares two distributions; the lockstep run removes the seed noise instead. clrepro runs the pair's
experiment once and records, per task: the weights training starts from (all of them at task 1; the new head and the
re-drawn task embeddings at later tasks), the permutation of the training samples in every epoch, the training
inputs themselves (so that the peer can map its own sample indices onto clrepro's by content), and every weight at the
end of every epoch, plus the accuracy matrix. `peers/<peer>_lockstep.py` then runs the peer's own pipeline from those
weights in that batch order and reports, epoch by epoch, how far its weights and its matrix are from clrepro's.
Given the same start and the same batches, any difference is the two implementations' arithmetic.
"""

from __future__ import annotations

import argparse
import re
import sys
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pairs import resolve  # noqa: E402

# clrepro's state-dict names -> the tool-neutral names the peer side maps onto its own (see canonical()).
CANONICAL = [(re.compile(r"^backbone\.body\.fc\.(\d+)\.(weight|bias)$"), r"fc.\1.\2"),
             (re.compile(r"^backbone\.body\.bn\.(\d+)\.(weight|bias|running_mean|running_var)$"), r"bn.\1.\2")]


def canonical(algo, task_id: int) -> dict[str, torch.Tensor]:
    """The weights a parity pair's MLP has, under tool-neutral names: fc.i.*, bn.i.*, emb.i (HAT family), head.* (task's)."""
    out = {}
    for name, v in algo.state_dict().items():
        for pat, rep in CANONICAL:
            if pat.match(name):
                out[pat.sub(rep, name)] = v.detach().clone().cpu()
    hat = getattr(algo.backbone, "hat", None)
    if hat is not None:
        for i, e in enumerate(hat.embeddings.values()):
            out[f"emb.{i}"] = e.detach().clone().cpu().reshape(-1)
    head = algo.heads.head(task_id)
    out["head.weight"], out["head.bias"] = head.weight.detach().clone().cpu(), head.bias.detach().clone().cpu()
    return out


def record(pair: dict, seed: int, out: Path | None, tasks: int | None, extra: list[str] = (),
           perturb: float = 0.0) -> Path | dict:
    """Run clrepro's side of `pair` with `seed` (plus `extra` overrides: a negative control) and write
    <out>/clrepro.pt (what the peer replays); with out=None return the recording instead. `perturb`: every weight
    is scaled by 1 + perturb before the first step (the float-noise control, see floor())."""
    from clrepro.config.load import load_experiment
    from clrepro.engine import loop as loop_mod

    c = pair["clrepro"]
    overrides = [*c.get("overrides", []), f"seed={seed}", "references.joint=off", "references.independent=off",
                 "references.random=off"]
    if tasks:
        overrides.append(f"benchmark.num_tasks={tasks}")
    overrides += list(extra)
    cfg = load_experiment(c["experiment"], overrides)
    engine = loop_mod.Engine(cfg, seed)
    rec = {"pair": pair["id"], "seed": seed, "epochs": cfg.trainer.epochs, "control_overrides": list(extra),
           "tasks": {}}
    state = {"task": None, "n": None}

    real_randperm = torch.randperm

    def randperm(n, *a, **k):  # the loop's epoch order (no generator argument) is recorded
        p = real_randperm(n, *a, **k)
        if state["task"] is not None and n == state["n"] and "generator" not in k:
            rec["tasks"][state["task"]]["orders"].append(p.clone())
        return p

    loop_mod.torch = types.SimpleNamespace(**{k: getattr(torch, k) for k in dir(torch) if not k.startswith("__")})
    loop_mod.torch.randperm = randperm
    real_fit, real_validate = engine.fit, engine._validate

    def fit(x, y, task_id, step_task, val_tasks):
        state["task"], state["n"] = step_task, len(y)
        if perturb and not rec["tasks"]:
            with torch.no_grad():
                for p in engine.algorithm.parameters():
                    p.mul_(1 + perturb)
        rec["tasks"][step_task] = {"init": canonical(engine.algorithm, step_task), "x": x.detach().cpu().clone(),
                                   "y": y.detach().cpu().clone(), "orders": [], "epoch_params": []}
        return real_fit(x, y, task_id, step_task, val_tasks)

    def validate(val_tasks):
        t = state["task"]
        rec["tasks"][t]["epoch_params"].append(canonical(engine.algorithm, t))
        return real_validate(val_tasks)

    engine.fit, engine._validate = fit, validate
    try:
        result = engine.run()
    finally:
        loop_mod.torch = torch
    rec["acc"] = torch.tensor(result.acc)
    if out is None:
        return rec
    out.mkdir(parents=True, exist_ok=True)
    path = out / "clrepro.pt"
    torch.save(rec, path)
    return path


def divergence(a: dict, b: dict) -> dict[int, list[float]]:
    """Per task, the largest relative weight difference between two recordings at the end of each epoch."""
    return {t: [max(float((pa[n] - pb[n]).norm() / pb[n].norm().clamp_min(1e-12)) for n in pb)
                for pa, pb in zip(a["tasks"][t]["epoch_params"], b["tasks"][t]["epoch_params"])] for t in b["tasks"]}


def floor(pair: dict, seed: int, tasks: int | None, eps: float, base: dict) -> dict:
    """The float-noise floor of a pair: clrepro against itself with every initial weight scaled by 1 + eps (about
    one rounding), per task and epoch. A peer that differs from clrepro by no more than this differs by rounding."""
    other = record(pair, seed, None, tasks, perturb=eps)
    cells = float((other["acc"] - base["acc"]).abs().nan_to_num(0).max())
    return {"perturb": eps, "epochs": divergence(other, base), "acc_max_abs_diff": cells}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", required=True)
    ap.add_argument("--pair", required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tasks", type=int, help="train only the first N tasks (default: the pair's)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--floor", type=float, metavar="EPS", help="also run the float-noise control: clrepro again "
                    "from every initial weight × (1 + EPS), compared epoch by epoch (<out>/floor.json)")
    ap.add_argument("--control", action="append", default=[], metavar="KEY=VALUE",
                    help="an extra clrepro override the peer does not get: a negative control, whose report must "
                         "show differences (repeatable)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pair = resolve(args.pairs, args.pair)
    pair["clrepro"]["overrides"] = [*pair["clrepro"].get("overrides", []), f"trainer.threads={args.threads}"]
    path = record(pair, args.seed, args.out, args.tasks, args.control)
    base = torch.load(path)
    print(f"lockstep: clrepro {args.pair} seed {args.seed} recorded in {path}; final row "
          + " ".join(f"{v:.4f}" for v in base["acc"][-1].tolist()))
    if args.floor:
        import json

        f = floor(pair, args.seed, args.tasks, args.floor, base)
        (args.out / "floor.json").write_text(json.dumps(f, indent=1))
        for t, e in f["epochs"].items():
            print(f"floor (weights × (1 + {args.floor:g})) task {t}: " + " ".join(f"{v:.1e}" for v in e))
        print(f"floor: largest cell difference {f['acc_max_abs_diff']:.4f}")


if __name__ == "__main__":
    main()
