"""`make parity [PAIR=peer/pair]`: build the peers, export the images, run both tools per pair, compare.
`make parity-lockstep`: the same pairs as lockstep runs (the peer replays clrepro's start and batch order)."""

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
FLOOR_EPS = 1e-7  # the lockstep runs' float-noise control: clrepro against itself from weights × (1 + FLOOR_EPS)


def sh(cmd: list[str], log: Path | None = None) -> subprocess.Popen:
    """Start a command with its output appended to a log file (or inherited)."""
    out = open(log, "a") if log else None
    return subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT if out else None)


def lockstep(pf: Path, peer: str, pid: str, venv: str, data: Path, args) -> None:
    """Record clrepro's run and replay it in the peer, per seed, into $PARITY_CACHE/lockstep/<peer>/<pair>/seed<k>
    (a seed with a report is skipped; the recording, ~100 MB, is deleted once the replay has reported)."""
    from pairs import resolve

    replay = HERE / "peers" / f"{peer}_lockstep.py"
    pair = resolve(pf, pid)
    why = ("no " + replay.name if not replay.is_file() else "blocked by the reference"
           if pair.get("peer", {}).get("unsupported") else pair["lockstep"] if isinstance(pair.get("lockstep"), str)
           else None)
    if why:
        print(f"parity {peer}/{pid}: no lockstep run ({' '.join(why.split())})")
        return
    for seed in args.seeds or pair["lockstep_seed_list"]:
        d = CACHE / "lockstep" / peer / pid / f"seed{seed}"
        if (d / "report.json").is_file():
            continue
        d.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        common = ["--pairs", str(pf), "--pair", pid, "--threads", str(args.threads)]
        codes = [sh([sys.executable, str(HERE / "lockstep.py"), *common, "--seed", str(seed), "--out", str(d),
                     "--floor", str(FLOOR_EPS)], d / "lockstep.log").wait()]
        if not codes[0]:
            codes.append(sh([f"{venv}/bin/python", str(replay), *common, "--data", str(data), "--dir", str(d)],
                            d / "lockstep.log").wait())
        if codes == [0, 0]:
            (d / "clrepro.pt").unlink(missing_ok=True)
        print(f"parity {peer}/{pid} lockstep seed {seed}: {time.time() - t0:.0f} s (exit {codes}; log {d}/lockstep.log)",
              flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", nargs="*", help="peer or peer/pair ids (default: every pair of pairs/*.yaml)")
    ap.add_argument("--seeds", type=int, nargs="*", help="seed numbers (default: each pair's own list)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per runner; both runners run at once")
    ap.add_argument("--sequential", action="store_true", help="run the two tools one after the other (quiet timing)")
    ap.add_argument("--lockstep", action="store_true",
                    help="lockstep runs instead: the peer replays clrepro's start and batch order (peers that have a "
                         "peers/<peer>_lockstep.py; seeds: each pair's lockstep_seeds)")
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
        if args.lockstep:
            for pid in ids:
                lockstep(pf, peer, pid, venv, data, args)
            continue
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
