"""clrepro's side of a parity pair: the pair's experiment + overrides per seed, scored by clrepro's metric code."""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pairs import resolve  # noqa: E402


def env_info(threads: int) -> dict:
    """Tool and machine versions for env.json."""
    import torch

    from clrepro.tracking.manifest import git_state, package_versions

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"tool": "clrepro", "versions": package_versions(), "git": git_state(), "python": platform.python_version(),
            "torch": torch.__version__, "threads": threads, "cpu": cpu}


def run_seed(pair: dict, seed: int, out: Path, refs: Path) -> dict:
    """Main run + the references its metrics need (cached per reference config and seed); metrics.json."""
    from clrepro.config.load import load_experiment
    from clrepro.engine.experiment import ReferenceCache, run_experiment

    c = pair["clrepro"]
    metrics = pair["metrics"] if seed in pair["reference_seed_list"] else [m for m in pair["metrics"]
                                                                           if m not in ("FWT", "FR")]
    overrides = [*c.get("overrides", []), f"seed={seed}", f"metrics=[{','.join(metrics)}]"]
    t0 = time.perf_counter()
    cfg = load_experiment(c["experiment"], overrides)
    result = run_experiment(cfg, seed=seed, reference_cache=ReferenceCache(refs))
    total = time.perf_counter() - t0
    main = result.main
    refs_s = result.engine_seconds - main.train_seconds - main.eval_seconds  # 0 when every reference was cached
    write_run_folder_light(result, out)
    m = {k: result.metrics.get(k) for k in pair["metrics"]}
    return {"seed": seed, **m, "wall_s": round(total - refs_s, 3), "train_s": round(main.train_seconds, 3),
            "refs_s": round(refs_s, 3), "references": result.reference_sources, "config_hash": result.config_hash,
            "metric_code": "clrepro.metrics.cl.compute_cl_metrics / clrepro.metrics.cul.cul_metrics"}


def write_run_folder_light(result, out: Path) -> None:
    """acc.csv and the reference matrices, as `clrepro run` writes them (no plots: they are not timed peers' work)."""
    from clrepro.metrics.io import write_acc_csv, write_joint_csv

    out.mkdir(parents=True, exist_ok=True)
    write_acc_csv(out / "acc.csv", result.main.acc)
    for kind, mat in result.references.items():
        (out / f"ref{kind}").mkdir(exist_ok=True)
        (write_joint_csv if kind == "joint" else write_acc_csv)(out / f"ref{kind}" / "acc.csv", mat)
    (out / "config.json").write_text(json.dumps(result.config, indent=1, default=str))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pairs", required=True)
    ap.add_argument("--pair", required=True)
    ap.add_argument("--seeds", type=int, nargs="*")
    ap.add_argument("--data", help="unused: clrepro reads its embedded images directly (the exported files are them)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--refs", type=Path, help="reference cache (default <out>/../../refs/clrepro)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    pair = resolve(args.pairs, args.pair)
    pair["clrepro"]["overrides"] = [*pair["clrepro"].get("overrides", []), f"trainer.threads={args.threads}"]
    refs = args.refs or args.out.parent.parent / "refs" / "clrepro"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "env.json").write_text(json.dumps(env_info(args.threads), indent=2))
    for seed in args.seeds or pair["seed_list"]:
        d = args.out / f"seed{seed}"
        if (d / "metrics.json").is_file():
            continue
        rec = run_seed(pair, seed, d, refs)
        (d / "metrics.json").write_text(json.dumps(rec, indent=2))
        print(f"clrepro {pair['id']} seed {seed}: AA {rec.get('AA')}  {rec['wall_s']:.1f}s (+refs {rec['refs_s']:.1f}s)",
              flush=True)


if __name__ == "__main__":
    main()
