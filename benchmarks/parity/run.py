"""`make parity [PAIR=peer/pair]`: build the peers, export the images, run both tools per pair, compare."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

from pairs import load_pairs  # noqa: E402

CACHE = Path(os.environ.get("PARITY_CACHE", Path.home() / ".cache" / "clrepro" / "parity"))


def sh(cmd: list[str], log: Path | None = None) -> subprocess.Popen:
    """Start a command with its output appended to a log file (or inherited)."""
    out = open(log, "a") if log else None
    return subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT if out else None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", nargs="*", help="peer or peer/pair ids (default: every pair of pairs/*.yaml)")
    ap.add_argument("--seeds", type=int, nargs="*", help="seed numbers (default: each pair's own list)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per runner; both runners run at once")
    ap.add_argument("--sequential", action="store_true", help="run the two tools one after the other (quiet timing)")
    args = ap.parse_args()
    runs, data = CACHE / "runs", CACHE / "data"
    py = sys.executable
    subprocess.run([py, str(HERE / "export_data.py"), str(data)], cwd=ROOT, check=True)
    t_start = time.time()
    for pf in sorted((HERE / "pairs").glob("*.yaml")):
        spec = load_pairs(pf)
        peer = spec["peer"]
        ids = [p for p in spec["pairs"] if not args.only or peer in args.only or f"{peer}/{p}" in args.only]
        if not ids:
            continue
        venv = subprocess.run(["bash", str(HERE / "setup_peer.sh"), peer], check=True, capture_output=True,
                              text=True).stdout.strip().splitlines()[-1]
        for pid in ids:
            base = runs / peer / pid
            base.mkdir(parents=True, exist_ok=True)
            common = ["--pairs", str(pf), "--pair", pid, "--data", str(data), "--threads", str(args.threads)]
            if args.seeds:
                common += ["--seeds", *map(str, args.seeds)]
            cmds = [([f"{venv}/bin/python", str(HERE / "peers" / f"{peer}_runner.py"), *common, "--out",
                      str(base / peer), "--refs", str(runs / peer / "refs" / peer)], base / f"{peer}.log"),
                    ([py, str(HERE / "clrepro_runner.py"), *common, "--out", str(base / "clrepro"), "--refs",
                      str(runs / peer / "refs" / "clrepro")], base / "clrepro.log")]
            print(f"parity {peer}/{pid}: running (logs in {base})", flush=True)
            t0 = time.time()
            if args.sequential:
                codes = [sh(c, log).wait() for c, log in cmds]
            else:
                procs = [sh(c, log) for c, log in cmds]
                codes = [p.wait() for p in procs]
            print(f"parity {peer}/{pid}: done in {time.time() - t0:.0f} s (exit {codes})", flush=True)
            if any(codes):
                print(f"parity {peer}/{pid}: a runner failed; see {base}/*.log", file=sys.stderr)
    only = ["--only", *args.only] if args.only else []
    subprocess.run([py, str(HERE / "compare.py"), "--runs", str(runs), *only], cwd=ROOT, check=True)
    print(f"parity: {time.time() - t_start:.0f} s in all")


if __name__ == "__main__":
    main()
