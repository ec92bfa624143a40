"""CLArena 1.1.0's side of a parity pair: CLArena's own pipelines and metric code, one pair, many seeds.

    python clarena_runner.py --pairs pairs/clarena.yaml --pair hat --seeds 1 2 --data <root> --out <dir> \
        [--refs <dir>] [--threads 1] [--epochs N]

Runs inside the clarena venv (setup_peer.sh clarena). Per seed it composes CLArena configs in memory (its
Hydra schema, as an `example_configs` index would give them) and drives, as `clarena` CL_FULL_EXPR does:
  1. `CLMainExperiment` (the main run)                                  -> <out>/seed<k>/acc.csv
  2. the references, each config derived by CLArena's `preprocess_config`: joint (`MTLExperiment`),
     independent and random (`CLMainExperiment` with Independent / Random), cached per seed under
     --refs keyed by the backbone variant (they do not depend on the algorithm)  -> <out>/seed<k>/ref*/acc.csv
  3. `CLFullEvaluation` on those files (BWT, FWT, FR; see clarena_metrics.py)
and writes metrics.json. `--epochs` overrides the pair's epochs for smoke tests only (recorded in metrics.json).
CLArena's own output tree of the main run (results/, lightning CSV logs) stays in <out>/seed<k>/clarena/.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import fcntl
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # benchmarks/parity: pairs.py (PyYAML only)
sys.path.insert(0, str(HERE))

RAW = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

# clrepro's FG-AdaHAT measure names (the papers' abbreviations) -> CLArena's importance_type.
IMPORTANCE_TYPES = {"IG": "input_weight_gradient_abs_sum", "OG": "output_weight_gradient_abs_sum",
                    "CU": "output_weight_abs_sum_x_activation_abs", "ICU": "input_weight_abs_sum_x_activation_abs",
                    "AFI": "input_weight_gradient_square_sum_x_activation_abs", "FA": "feature_ablation_abs",
                    "II": "internal_influence_abs", "GS": "gradientshap_abs", "DL": "deeplift_abs"}
ALGORITHMS = {"finetuning": "Finetuning", "lwf": "LwF", "ewc": "EWC", "hat": "HAT", "adahat": "AdaHAT",
              "fgadahat": "FGAdaHAT"}
HAT_FAMILY = {"hat", "adahat", "fgadahat"}


def fail(msg: str, code: int = 2) -> None:
    """One line on stderr and exit: 2 = a usage or environment problem, 3 = the pair cannot run on CLArena."""
    print(f"clarena_runner: {msg}", file=sys.stderr)
    sys.exit(code)


# ----- the pair ----------------------------------------------------------------------------------------
def resolve_pair(path: str, pair: str) -> dict:
    """The pair's settings (pairs.resolve: `common` deep-merged with `pairs.<pair>`)."""
    from pairs import load_pairs, resolve

    if pair not in load_pairs(path)["pairs"]:
        fail(f"{path}: unknown pair '{pair}' (allowed: {', '.join(load_pairs(path)['pairs'])})")
    return resolve(path, pair)


# ----- CLArena configs ---------------------------------------------------------------------------------
def backbone_cfg(peer: dict) -> dict:
    """784-[256,100]-64: `hidden`'s last entry is CLArena's output_dim (the TIL heads sit on it)."""
    hidden = list(peer["backbone"]["hidden"])
    common = {"input_dim": 784, "hidden_dims": hidden[:-1], "output_dim": hidden[-1]}
    if peer["algorithm"] in HAT_FAMILY:
        return {"_target_": "clarena.backbones.HATMaskMLP", **common, "gate": "sigmoid",
                "batch_normalization": None}
    return {"_target_": "clarena.backbones.CLMLP", **common,
            "batch_normalization": bool(peer["backbone"].get("batch_normalization", False))}


def reference_backbone_cfg(peer: dict) -> dict:
    """The references' backbone: the main one, or for the HAT family its plain twin (CLMLP without BN), since
    Finetuning-style forwards (Independent, Random, JointLearning) cannot drive a HATMaskMLP."""
    b = backbone_cfg(peer)
    if b["_target_"] == "clarena.backbones.HATMaskMLP":
        b = {"_target_": "clarena.backbones.CLMLP", **{k: b[k] for k in ("input_dim", "hidden_dims", "output_dim")},
             "batch_normalization": False}
    return b


def algorithm_cfg(peer: dict) -> dict:
    name = peer["algorithm"]
    if name not in ALGORITHMS:
        fail(f"algorithm '{name}' has no CLArena mapping here")
    hp = dict(peer.get("hparams") or {})
    if name == "fgadahat" and hp.get("importance_type") in IMPORTANCE_TYPES:
        hp["importance_type"] = IMPORTANCE_TYPES[hp["importance_type"]]
    return {"_target_": f"clarena.cl_algorithms.{ALGORITHMS[name]}", **hp}


def optimizer_cfg(peer: dict) -> dict:
    o = peer["optimizer"]
    if o.get("name", "adam") != "adam":
        fail(f"optimizer '{o['name']}' not mapped")
    return {"_target_": "torch.optim.Adam", "_partial_": True, "lr": float(o["lr"]),
            "betas": list(o.get("betas", [0.9, 0.999])), "eps": float(o.get("eps", 1e-8)),
            "weight_decay": float(o.get("weight_decay", 0.0))}


def lr_scheduler_cfg(peer: dict) -> dict:
    s = peer["lr_scheduler"]
    if s.get("name") != "reduce_on_plateau":
        fail(f"lr_scheduler '{s.get('name')}' not mapped")
    return {"_target_": "torch.optim.lr_scheduler.ReduceLROnPlateau", "_partial_": True, "mode": "min",
            "factor": float(s["factor"]), "patience": int(s["patience"])}


def main_cfg(pair: dict, seed: int, data: Path, output_dir: Path, epochs: int, backbone: dict | None = None,
             algorithm: dict | None = None):
    """A CL_MAIN_EXPR config as CLArena's Hydra composition would give it (loggers/bars/plots/checkpoints off)."""
    from omegaconf import OmegaConf

    peer = pair["peer"]
    b = peer["benchmark"]
    if b["name"] != "permuted_mnist":
        fail(f"benchmark '{b['name']}' not mapped")
    T = int(b["num_tasks"])
    out = str(output_dir)
    return OmegaConf.create({
        "pipeline": "CL_MAIN_EXPR",
        "expr_name": f"parity_{pair['id']}",
        "cl_paradigm": "TIL",
        "train_tasks": T,
        "eval_after_tasks": T,
        "global_seed": seed,
        "cl_dataset": {"_target_": "clarena.cl_datasets.PermutedMNIST", "root": str(data), "num_tasks": T,
                       "validation_percentage": float(b["validation_percentage"]),
                       "batch_size": int(b["batch_size"]), "num_workers": 0,
                       "permutation_mode": "first_channel_only"},  # permutation_seeds: CLArena's default t-1
        "cl_algorithm": algorithm or algorithm_cfg(peer),
        "backbone": backbone or backbone_cfg(peer),
        "optimizer": optimizer_cfg(peer),
        "lr_scheduler": lr_scheduler_cfg(peer),
        "trainer": {"_target_": "lightning.Trainer", "max_epochs": epochs, "accelerator": "cpu", "devices": 1,
                    "enable_progress_bar": False, "enable_model_summary": False, "enable_checkpointing": False,
                    "log_every_n_steps": 50},
        # CLAccuracy writes acc.csv; CLLoss logs task_t/learning_curve/val/loss_cls, the scheduler's monitor.
        # No plot names: CLArena then draws no plots.
        "metrics": [{"_target_": "clarena.metrics.CLAccuracy", "save_dir": "${output_dir}/results/",
                     "test_acc_csv_name": "acc.csv"},
                    {"_target_": "clarena.metrics.CLLoss", "save_dir": "${output_dir}/results/",
                     "test_loss_cls_csv_name": "loss_cls.csv"}],
        # CLArena requires at least one Lightning logger: the CSV one (no TensorBoard, no wandb).
        "lightning_loggers": {"csv": {"_target_": "lightning.pytorch.loggers.CSVLogger",
                                      "save_dir": "${output_dir}", "name": "lightning_logs"}},
        # ... and at least one callback: its python-logging one (silenced below). No SaveModels, no progress bar.
        "callbacks": [{"_target_": "clarena.callbacks.CLPylogger"}, {"_target_": "__main__.FitTimer"}],
        "output_dir": out,
        "misc": {"timestamp": "parity"},
    })


# ----- timing ------------------------------------------------------------------------------------------
def _fit_timer_class():
    from lightning import Callback

    class FitTimer(Callback):
        """Seconds inside trainer.fit (training + per-epoch validation), summed over the tasks: train_s."""

        total = 0.0

        def on_fit_start(self, trainer, pl_module):
            self._t0 = time.perf_counter()

        def on_fit_end(self, trainer, pl_module):
            FitTimer.total += time.perf_counter() - self._t0

    return FitTimer


# ----- references --------------------------------------------------------------------------------------
@contextlib.contextmanager
def locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


REF_KINDS = ("joint", "independent", "random")
REF_TYPES = {"joint": "CL_REF_JOINT_EXPR", "independent": "CL_REF_INDEPENDENT_EXPR", "random": "CL_REF_RANDOM_EXPR"}


def reference_key(pair: dict, epochs: int) -> tuple[str, dict]:
    """(folder name, what the references depend on): the backbone variant plus a hash of the rest."""
    peer = pair["peer"]
    b = reference_backbone_cfg(peer)
    dep = {"backbone": b, "optimizer": optimizer_cfg(peer), "lr_scheduler": lr_scheduler_cfg(peer),
           "benchmark": peer["benchmark"], "epochs": epochs}
    variant = "mlp_bn" if b["batch_normalization"] else "mlp"
    h = hashlib.sha1(json.dumps(dep, sort_keys=True).encode()).hexdigest()[:8]
    return f"{variant}-{h}", dep


def ensure_references(pair: dict, seed: int, data: Path, refs: Path, epochs: int) -> tuple[dict, float, list]:
    """The three reference acc.csv paths for this seed (run unless cached) and the seconds spent running them."""
    from clarena.pipelines import CLMainExperiment, MTLExperiment
    from clarena.utils.cfg import preprocess_config

    key, dep = reference_key(pair, epochs)
    base = refs / key / f"seed{seed}"
    paths = {k: base / f"ref{k}" / "results" / "acc.csv" for k in REF_KINDS}
    spent, ran = 0.0, []
    with locked(refs / key / f".seed{seed}.lock"):
        for kind in REF_KINDS:
            done = base / f"ref{kind}" / ".done"
            if done.exists() and paths[kind].exists():
                continue
            shutil.rmtree(base / f"ref{kind}", ignore_errors=True)  # CLArena appends to an existing acc.csv
            cfg = main_cfg(pair, seed, data, base, epochs, backbone=reference_backbone_cfg(pair["peer"]),
                           algorithm={"_target_": "clarena.cl_algorithms.Finetuning"})
            ref_cfg = preprocess_config(cfg, type=REF_TYPES[kind])
            t0 = time.perf_counter()
            (MTLExperiment if kind == "joint" else CLMainExperiment)(ref_cfg).run()
            spent += time.perf_counter() - t0
            ran.append(kind)
            done.write_text(json.dumps({"seconds": round(time.perf_counter() - t0, 3), "depends_on": dep}))
    return paths, spent, ran


# ----- one seed ----------------------------------------------------------------------------------------
def run_seed(pair: dict, seed: int, data: Path, out: Path, refs: Path, epochs: int) -> dict:
    from clarena.pipelines import CLMainExperiment

    from clarena_metrics import METRIC_CODE, score

    work = out / "clarena"
    shutil.rmtree(work, ignore_errors=True)  # CLArena appends rows to an existing acc.csv
    FitTimer = sys.modules["__main__"].FitTimer
    FitTimer.total = 0.0
    cfg = main_cfg(pair, seed, data, work, epochs)
    t0 = time.perf_counter()
    CLMainExperiment(cfg).run()
    t_main = time.perf_counter() - t0
    train_s = FitTimer.total
    ref_paths, refs_s, ran = {}, 0.0, []
    if seed in pair["reference_seed_list"]:  # FWT/FR need them; they are slow in CLArena, so only for some seeds
        ref_paths, refs_s, ran = ensure_references(pair, seed, data, refs, epochs)
    t1 = time.perf_counter()
    m = score(work / "results" / "acc.csv", ref_paths.get("joint"), ref_paths.get("independent"),
              ref_paths.get("random"), int(pair["peer"]["benchmark"]["num_tasks"]), out_dir=work)
    eval_s = time.perf_counter() - t1
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(work / "results" / "acc.csv", out / "acc.csv")
    for kind, p in ref_paths.items():
        (out / f"ref{kind}").mkdir(exist_ok=True)
        shutil.copyfile(p, out / f"ref{kind}" / "acc.csv")
    (out / "config.yaml").write_text(__import__("omegaconf").OmegaConf.to_yaml(cfg))
    res = {"seed": seed, **{k: m.get(k) for k in pair["metrics"]},
           "wall_s": round(t_main + eval_s, 3), "train_s": round(train_s, 3), "eval_s": round(eval_s, 3),
           "refs_s": round(refs_s, 3), "references_run": ran,
           "references": str(ref_paths["joint"].parents[2]) if ref_paths else None,
           "metric_code": METRIC_CODE}
    if epochs != pair["epochs"]:
        res["epochs_override"] = epochs
    return res


def env_info(threads: int) -> dict:
    import importlib.metadata as md

    import torch

    cpu = ""
    if Path("/proc/cpuinfo").exists():
        cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name")), "")
    pkgs = {}
    for p in ("clarena", "torch", "torchvision", "lightning", "torchmetrics", "captum", "hydra-core", "omegaconf",
              "numpy", "pandas"):
        with contextlib.suppress(md.PackageNotFoundError):
            pkgs[p] = md.version(p)
    patches = sorted(p.name for p in (HERE.parent / "peer_patches").glob("clarena-*.patch"))
    return {"tool": "clarena", "version": pkgs.get("clarena"), "versions": pkgs, "patches": patches,
            "python": platform.python_version(), "torch": torch.__version__, "threads": threads, "cpu": cpu,
            "num_workers": 0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", required=True)
    ap.add_argument("--pair", required=True)
    ap.add_argument("--seeds", type=int, nargs="*")
    ap.add_argument("--data", required=True, type=Path, help="root holding MNIST/raw/*-ubyte (export_data.py)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--refs", type=Path, help="reference cache, shared by the pairs (default <out>/../refs)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epochs", type=int, help="override the pair's epochs (smoke tests only)")
    args = ap.parse_args()

    pair = resolve_pair(args.pairs, args.pair)
    if pair["peer"].get("unsupported"):
        fail(f"pair '{args.pair}' cannot run on CLArena: {' '.join(str(pair['peer']['unsupported']).split())}", 3)
    missing = [f for f in RAW if not (args.data / "MNIST" / "raw" / f).is_file()]
    if missing:
        fail(f"no exported MNIST under {args.data}/MNIST/raw (missing {missing[0]}); "
             f"run: .venv/bin/python benchmarks/parity/export_data.py {args.data}")
    try:
        import clarena  # noqa: F401
        import clarena.pipelines  # noqa: F401
    except ImportError as e:
        fail(f"clarena is not importable ({e}); run with the clarena venv's python "
             "(bash benchmarks/parity/setup_peer.sh clarena prints its path)")

    os.environ.setdefault("WANDB_MODE", "disabled")
    import torch

    from clarena_metrics import quiet

    quiet()
    torch.set_num_threads(args.threads)
    sys.modules["__main__"].FitTimer = _fit_timer_class()  # the `__main__.FitTimer` callback target
    epochs = args.epochs or int(pair["epochs"])
    refs = (args.refs or args.out.parent / "refs").resolve()
    data = args.data.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "env.json").write_text(json.dumps(env_info(args.threads), indent=2))
    for seed in args.seeds or pair["seed_list"]:
        d = (args.out / f"seed{seed}").resolve()
        if (d / "metrics.json").exists():
            print(f"seed {seed}: done already ({d}/metrics.json)")
            continue
        res = run_seed(copy.deepcopy(pair), seed, data, d, refs, epochs)
        (d / "metrics.json").write_text(json.dumps(res, indent=1))
        print(f"seed {seed}: " + ", ".join(f"{k}={res[k]:.4f}" if isinstance(res[k], float) else f"{k}={res[k]}"
                                           for k in (*pair["metrics"], "wall_s", "refs_s")), flush=True)


if __name__ == "__main__":
    main()
