"""One HAT run on 5-task embedded PMNIST as whole processes, side by side: clrepro, a raw PyTorch loop, CLArena.

Usage: python benchmarks/single_run/measure.py [--pairs 3] [--no-clarena] [--threads 1]
Each round runs the three commands one after the other (interleaved, so drift hits all of them alike) and
records wall seconds and peak RSS (the child's ru_maxrss). Prints medians and the ratios the targets name:
clrepro / raw loop (≤ 1.5x), CLArena / clrepro (≥ 3x), clrepro peak RSS (≤ 450 MiB). The work: 280 training
steps (5 tasks x 2 epochs x 28 batches of 128), validation per epoch, test after each task, no references.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CACHE = Path(os.environ.get("PARITY_CACHE", Path.home() / ".cache" / "clrepro" / "parity"))


def timed(cmd: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one whole process."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{p.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_maxrss / 1024


def commands(threads: int, out: Path, clarena: bool) -> dict[str, list[str]]:
    py = sys.executable
    cmds = {
        "clrepro": [str(Path(py).parent / "clrepro"), "run", "hat_pmnist", "optimizer.lr=0.001",
                    "references.independent=off", "references.joint=off", "references.random=off",
                    "metrics=[AA,BWT]", f"trainer.threads={threads}", "--quiet", "--out", str(out / "clrepro")],
        "raw loop": [py, str(HERE / "raw_hat.py"), "--threads", str(threads)],
    }
    venv = CACHE / "venvs" / "clarena" / "bin" / "python"
    if clarena and venv.exists():
        cmds["CLArena 1.1.0"] = [str(venv), str(ROOT / "benchmarks/parity/peers/clarena_runner.py"),
                                 "--pairs", str(ROOT / "benchmarks/parity/pairs/clarena.yaml"), "--pair", "hat",
                                 "--seeds", "1001", "--epochs", "2", "--data", str(CACHE / "data"),
                                 "--out", str(out / "clarena"), "--threads", str(threads)]
    return cmds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-clarena", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the measurements here")
    args = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    results: dict[str, list[tuple[float, float]]] = {}
    for r in range(args.pairs):
        with tempfile.TemporaryDirectory() as d:
            for name, cmd in commands(args.threads, Path(d) / str(r), not args.no_clarena).items():
                results.setdefault(name, []).append(timed(cmd, env))
                print(f"round {r + 1} {name}: {results[name][-1][0]:.1f} s, {results[name][-1][1]:.0f} MiB", flush=True)
    med = {k: (statistics.median(w for w, _ in v), statistics.median(m for _, m in v)) for k, v in results.items()}
    print(f"\n{'':16} {'wall s':>8} {'peak RSS MiB':>13}")
    for k, (w, m) in med.items():
        print(f"{k:16} {w:8.2f} {m:13.0f}")
    c, raw = med["clrepro"][0], med["raw loop"][0]
    print(f"\nclrepro / raw loop: {c / raw:.2f}x (target <= 1.5x); clrepro peak RSS {med['clrepro'][1]:.0f} MiB "
          "(target <= 450)")
    if "CLArena 1.1.0" in med:
        print(f"CLArena / clrepro: {med['CLArena 1.1.0'][0] / c:.2f}x faster (target >= 3x)")
    if args.json:
        args.json.write_text(json.dumps({"rounds": results, "medians": med}, indent=1))


if __name__ == "__main__":
    main()
