"""Avalanche 0.6.0's side of a parity pair: Avalanche's own benchmarks, strategies and metric code, many seeds.

    python avalanche_runner.py --pairs pairs/avalanche.yaml --pair ewc --seeds 1 2 --data <root> --out <dir> \
        [--threads 1] [--epochs N]

Runs inside the avalanche venv (setup_peer.sh avalanche). Per seed:
  1. `RNGManager.set_random_seeds(seed)` (Python, NumPy and torch's global generators, Avalanche's own seeding);
  2. the benchmark from Avalanche's classic generators reading the exported IDX files under --data
     (`SplitMNIST` / `PermutedMNIST` with `dataset_root`; torchvision finds the raw files and downloads nothing);
  3. the network (784-256-100-64 ReLU MLP, then Avalanche's `MultiHeadClassifier` for TIL or one `nn.Linear`
     for DIL), Adam, and the pair's strategy class from `avalanche.training` (EWC, SynapticIntelligence, LwF, DER);
  4. for each training experience t: `strategy.train(exp_t, drop_last=..., reset_optimizer_state=...)`, then
     `strategy.eval(test_stream[:t+1])`; Avalanche's `accuracy_metrics(experience=True)` gives row t of the
     accuracy matrix and, after the last one, `bwt_metrics(stream=True)` gives BWT.
It writes <out>/seed<k>/acc.csv (clrepro's acc.csv layout), metrics.json and config.json. `--epochs` overrides
the pair's epochs for smoke tests only (recorded in metrics.json). Avalanche's loggers are off (no interactive,
text, TensorBoard or wandb logger): the EvaluationPlugin only collects the two metrics.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import json
import math
import os
import platform
import re
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # benchmarks/parity: pairs.py (PyYAML only)

RAW = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
STRATEGIES = {"naive": "Naive", "ewc": "EWC", "si": "SynapticIntelligence", "lwf": "LwF", "der": "DER"}
ACC_KEY = re.compile(r"^Top1_Acc_Exp/eval_phase/test_stream/Task(\d+)/Exp(\d+)$")
BWT_KEY = "StreamBWT/eval_phase/test_stream"
METRIC_CODE = ("avalanche.evaluation.metrics.accuracy_metrics(experience=True) -> acc matrix, AA = mean of its "
               "last row; avalanche.evaluation.metrics.bwt_metrics(stream=True) -> BWT (StreamBWT)")


def fail(msg: str, code: int = 2) -> None:
    """One line on stderr and exit: 2 = a usage or environment problem, 3 = the pair cannot run on Avalanche."""
    print(f"avalanche_runner: {msg}", file=sys.stderr)
    sys.exit(code)


def resolve_pair(path: str, pair: str) -> dict:
    """The pair's settings (pairs.resolve: `common` deep-merged with `pairs.<pair>`)."""
    from pairs import load_pairs, resolve

    if pair not in load_pairs(path)["pairs"]:
        fail(f"{path}: unknown pair '{pair}' (allowed: {', '.join(load_pairs(path)['pairs'])})")
    return resolve(path, pair)


# ----- benchmark, network, strategy ---------------------------------------------------------------------
def make_benchmark(b: dict, data: Path):
    """Avalanche's classic MNIST generators on the exported files (default Normalize(0.1307, 0.3081) transforms)."""
    from avalanche.benchmarks.classic import PermutedMNIST, SplitMNIST

    T = int(b["num_tasks"])
    if b["name"] == "split_mnist":
        order = list(b.get("class_order", range(10)))
        return SplitMNIST(T, return_task_id=bool(b["return_task_id"]), fixed_class_order=order,
                          class_ids_from_zero_in_each_exp=bool(b.get("class_ids_from_zero_in_each_exp", True)),
                          dataset_root=str(data))
    if b["name"] == "permuted_mnist":
        # The permutations come from Avalanche's RandomState(seed); one fixed seed for every run, the same
        # permutations as clrepro's benchmark.numpy_permutation_seed=seed.
        return PermutedMNIST(T, return_task_id=bool(b["return_task_id"]), seed=int(b["permutation_seed"]),
                             dataset_root=str(data))
    fail(f"benchmark '{b['name']}' not mapped")


def make_model(m: dict):
    """Linear -> ReLU per hidden layer (PyTorch's default init), then the heads.

    multi_head: Avalanche's MultiHeadClassifier (one IncrementalClassifier per task label, created by its
    `adaptation` at the task's first experience; `initial_out_features` units each); single_head: one nn.Linear.
    """
    import torch
    from torch import nn
    from avalanche.models import MultiHeadClassifier, MultiTaskModule

    dims = [784, *m["hidden"]]
    layers = []
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    features = nn.Sequential(*layers)

    if m["head"] == "multi_head":
        class MultiHeadMLP(MultiTaskModule):
            def __init__(self):
                super().__init__()
                self.features = features
                self.classifier = MultiHeadClassifier(dims[-1], initial_out_features=int(m["head_units"]))

            def forward(self, x, task_labels):  # as Avalanche's MTSimpleMLP
                return self.classifier(self.features(x.reshape(x.size(0), -1)), task_labels)

        return MultiHeadMLP()
    if m["head"] == "single_head":
        class SingleHeadMLP(nn.Module):
            def __init__(self):
                super().__init__()
                self.features = features
                self.classifier = nn.Linear(dims[-1], int(m["head_units"]))

            def forward(self, x):
                return self.classifier(self.features(x.reshape(x.size(0), -1)))

        return SingleHeadMLP()
    fail(f"model head '{m['head']}' not mapped")
    return torch.nn.Module()


def make_optimizer(o: dict, model):
    import torch

    if o.get("name", "adam") != "adam":
        fail(f"optimizer '{o['name']}' not mapped")
    return torch.optim.Adam(model.parameters(), lr=float(o["lr"]), betas=tuple(o.get("betas", (0.9, 0.999))),
                            eps=float(o.get("eps", 1e-8)), weight_decay=float(o.get("weight_decay", 0.0)))


def make_evaluator():
    """Only the two metrics, collected in memory: no logger at all (an empty list; Avalanche warns, silenced)."""
    from avalanche.evaluation.metrics import accuracy_metrics, bwt_metrics
    from avalanche.training.plugins import EvaluationPlugin

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return EvaluationPlugin(accuracy_metrics(experience=True), bwt_metrics(stream=True), loggers=[])


def make_strategy(peer: dict, model, optimizer, epochs: int, plugins: list | None = None):
    import avalanche.training as at
    from torch.nn import CrossEntropyLoss

    s = dict(peer["strategy"])
    name = s.pop("name")
    if name not in STRATEGIES:
        fail(f"strategy '{name}' not mapped")
    t = peer["train"]
    return getattr(at, STRATEGIES[name])(
        model=model, optimizer=optimizer, criterion=CrossEntropyLoss(), train_mb_size=int(t["batch_size"]),
        train_epochs=epochs, eval_mb_size=int(t.get("eval_batch_size", 1000)), device="cpu",
        evaluator=make_evaluator(), eval_every=-1, plugins=plugins, **s)


# ----- one seed ----------------------------------------------------------------------------------------
def run_seed(pair: dict, seed: int, data: Path, out: Path, epochs: int, plugins: list | None = None) -> dict:
    """One seed (`plugins`: extra Avalanche plugins, the lockstep replay's)."""
    import numpy as np
    from avalanche.training.determinism.rng_manager import RNGManager

    peer = pair["peer"]
    t0 = time.perf_counter()
    RNGManager.set_random_seeds(seed)
    bench = make_benchmark(peer["benchmark"], data)
    model = make_model(peer["model"])
    strategy = make_strategy(peer, model, make_optimizer(peer["optimizer"], model), epochs, plugins)
    T = len(bench.train_stream)
    acc = np.full((T, T), np.nan)
    train_kw = {"drop_last": bool(peer["train"]["drop_last"]),
                "reset_optimizer_state": bool(peer["train"]["reset_optimizer_state"])}
    train_s, steps, bwt = 0.0, [], None
    for t, exp in enumerate(bench.train_stream):
        t1 = time.perf_counter()
        strategy.train(exp, **train_kw)
        train_s += time.perf_counter() - t1
        steps.append(int(strategy.clock.train_exp_iterations))
        res = strategy.eval(bench.test_stream[: t + 1])
        for key, value in res.items():
            m = ACC_KEY.match(key)
            if m and int(m.group(2)) <= t:
                acc[t, int(m.group(2))] = float(value)
        if np.isnan(acc[t, : t + 1]).any():
            fail(f"seed {seed}: no accuracy for some experience after training {t + 1} ({sorted(res)})", 4)
        bwt = res.get(BWT_KEY)
    wall = time.perf_counter() - t0
    write_acc_csv(out / "acc.csv", acc)
    aa = float(np.mean(acc[-1]))
    gem_bwt = float(np.mean([acc[-1, k] - acc[k, k] for k in range(T - 1)])) if T > 1 else None
    if bwt is not None and gem_bwt is not None and not math.isclose(float(bwt), gem_bwt, abs_tol=1e-9):
        fail(f"seed {seed}: Avalanche's StreamBWT {bwt} differs from the matrix's GEM BWT {gem_bwt}", 4)
    metrics = {"AA": aa, "BWT": None if bwt is None else float(bwt), "FWT": None, "FR": None}
    res = {"seed": seed, **{k: metrics.get(k) for k in pair["metrics"]}, "wall_s": round(wall, 3),
           "train_s": round(train_s, 3), "steps_per_task": steps, "metric_code": METRIC_CODE}
    if epochs != int(pair["epochs"]):
        res["epochs_override"] = epochs
    (out / "config.json").write_text(json.dumps({"pair": pair["id"], "peer": peer, "epochs": epochs}, indent=1))
    return res


def write_acc_csv(path: Path, acc) -> None:
    """clrepro's acc.csv layout: after_training_task, average_accuracy, test_on_task_1..T; empty above the diagonal."""
    import numpy as np

    T = acc.shape[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["after_training_task", "average_accuracy", *[f"test_on_task_{t}" for t in range(1, T + 1)]])
        for n in range(T):
            row = acc[n]
            w.writerow([n + 1, repr(float(np.nanmean(row))), *["" if np.isnan(v) else repr(float(v)) for v in row]])


def env_info(threads: int) -> dict:
    import importlib.metadata as md

    import torch

    cpu = ""
    if Path("/proc/cpuinfo").exists():
        cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name")), "")
    pkgs = {}
    for p in ("avalanche-lib", "torch", "torchvision", "numpy", "scikit-learn", "torchmetrics", "qpsolvers"):
        with contextlib.suppress(md.PackageNotFoundError):
            pkgs[p] = md.version(p)
    patches = sorted(p.name for p in (HERE.parent / "peer_patches").glob("avalanche-*.patch"))
    return {"tool": "avalanche", "version": pkgs.get("avalanche-lib"), "versions": pkgs, "patches": patches,
            "python": platform.python_version(), "torch": torch.__version__, "threads": threads, "cpu": cpu,
            "num_workers": 0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", required=True)
    ap.add_argument("--pair", required=True)
    ap.add_argument("--seeds", type=int, nargs="*")
    ap.add_argument("--data", required=True, type=Path, help="root holding MNIST/raw/*-ubyte (export_data.py)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epochs", type=int, help="override the pair's epochs (smoke tests only)")
    ap.add_argument("--refs", type=Path, help="accepted for interface symmetry; Avalanche pairs need no references")
    args = ap.parse_args()

    pair = resolve_pair(args.pairs, args.pair)
    if pair["peer"].get("unsupported"):
        fail(f"pair '{args.pair}' cannot run on Avalanche: {' '.join(str(pair['peer']['unsupported']).split())}", 3)
    bad = [k for k in pair["metrics"] if k not in ("AA", "BWT")]
    if bad:
        fail(f"pair '{args.pair}' lists {bad}: Avalanche pairs compute AA and BWT only", 3)
    missing = [f for f in RAW if not (args.data / "MNIST" / "raw" / f).is_file()]
    if missing:
        fail(f"no exported MNIST under {args.data}/MNIST/raw (missing {missing[0]}); "
             f"run: .venv/bin/python benchmarks/parity/export_data.py {args.data}")
    os.environ.setdefault("WANDB_MODE", "disabled")
    try:
        import avalanche  # noqa: F401
        import avalanche.training  # noqa: F401
        import avalanche.benchmarks.classic  # noqa: F401
    except ImportError as e:
        fail(f"avalanche is not importable ({e}); run with the avalanche venv's python "
             "(bash benchmarks/parity/setup_peer.sh avalanche prints its path)")
    import torch

    warnings.filterwarnings("ignore", module=r"avalanche(\.|$)")
    torch.set_num_threads(args.threads)
    epochs = args.epochs or int(pair["epochs"])
    data = args.data.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "env.json").write_text(json.dumps(env_info(args.threads), indent=2))
    for seed in args.seeds or pair["seed_list"]:
        d = (args.out / f"seed{seed}").resolve()
        if (d / "metrics.json").exists():
            print(f"seed {seed}: done already ({d}/metrics.json)")
            continue
        res = run_seed(copy.deepcopy(pair), seed, data, d, epochs)
        (d / "metrics.json").write_text(json.dumps(res, indent=1))
        print(f"seed {seed}: " + ", ".join(f"{k}={res[k]:.4f}" if isinstance(res[k], float) else f"{k}={res[k]}"
                                           for k in (*pair["metrics"], "wall_s")), flush=True)


if __name__ == "__main__":
    main()
