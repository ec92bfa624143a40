"""Put each pair's two distributions side by side: mean ± std, difference, Welch p, TOST at ±margin, wall times.

Seeds come from the runs cache and from the committed ledger results/seeds.jsonl (see ledger.py), which this
script updates: seeds run on earlier machines count as long as the pair's protocol is unchanged."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from pairs import load_pairs, resolve  # noqa: E402
import lockstep_ledger  # noqa: E402
from stats import tost, welch_p  # noqa: E402

PRIMARY = ("AA", "AA_remaining")  # tested for equivalence at ±margin points
POINTS = 100.0  # metrics are stored as fractions; the tables show percentage points


def seed_records(folder: Path) -> dict[int, dict]:
    """seed -> metrics.json of every finished seed in a tool's folder."""
    out = {}
    for f in sorted(folder.glob("seed*/metrics.json")):
        rec = json.loads(f.read_text())
        out[int(rec.get("seed", f.parent.name[4:]))] = rec
    return out


def _fmt(values) -> str:
    v = np.asarray(values, float) * POINTS
    return f"{v.mean():.2f} ± {v.std(ddof=1):.2f}" if len(v) > 1 else (f"{v.mean():.2f}" if len(v) else "—")


def pair_rows(peer: str, pair: dict, runs: Path, margin: float, lock: dict | None = None) -> list[dict]:
    """One row per metric of the pair: both tools' values over the seeds both finished (`lock`: the pair's lockstep
    summary, which decides a primary row the seeded test leaves undecided)."""
    base = runs / peer / pair["id"]
    mine, theirs = seed_records(base / "clrepro"), seed_records(base / peer)
    seeds = sorted(set(mine) & set(theirs) & set(pair["seed_list"]))
    blocked = pair.get("peer", {}).get("unsupported")
    if blocked:  # the peer cannot run this pair: one row saying why, no numbers
        return [{"peer": peer, "pair": pair["id"], "metric": pair["metrics"][0], "n_clrepro": 0,
                 "peer_value": "—", "clrepro_value": "—", "verdict": "blocked by the reference",
                 "cause": " ".join(str(blocked).split())}]
    rows = []
    for metric in pair["metrics"]:
        a = [theirs[s][metric] for s in seeds if theirs[s].get(metric) is not None]
        b = [mine[s][metric] for s in seeds if mine[s].get(metric) is not None]
        row = {"peer": peer, "pair": pair["id"], "metric": metric, "n_peer": len(a), "n_clrepro": len(b),
               "peer_value": _fmt(a), "clrepro_value": _fmt(b)}
        if len(a) > 1 and len(b) > 1:
            pa, pb = np.asarray(a) * POINTS, np.asarray(b) * POINTS
            row["diff"] = round(float(pb.mean() - pa.mean()), 2)
            row["welch_p"] = round(welch_p(pa, pb), 3)
            if metric in PRIMARY:
                t = tost(pa, pb, margin)
                verdict = ("equivalent" if t["equivalent"] else "different" if row["welch_p"] < 0.05 else
                           # the seeds show no difference, and from the same start and batches the tools agree
                           "equivalent (lockstep)" if lock and lock["equivalent"] else
                           "undecided")  # undecided: neither shown within ±margin nor shown apart at these seeds
                row.update(tost_p=round(t["p"], 4), verdict=verdict, power=round(t["power"], 2),
                           n_for_80=t["n_for_80"])
                if pair.get("explain"):  # the cause of a row not shown equivalent, or what an equivalent one hides
                    row["cause"] = " ".join(pair["explain"].split())
        if metric == pair["metrics"][0]:
            wa = [theirs[s]["wall_s"] for s in seeds if theirs[s].get("wall_s") is not None]
            wb = [mine[s]["wall_s"] for s in seeds if mine[s].get("wall_s") is not None]
            if wa and wb:
                # medians: robust to a run slowed by other work on the machine
                row.update(peer_wall_s=round(float(np.median(wa)), 2), clrepro_wall_s=round(float(np.median(wb)), 2),
                           speedup=round(float(np.median(wa) / np.median(wb)), 2))
        rows.append(row)
    return rows


def metric_code_rows(peer: str, pair: dict, runs: Path) -> list[dict]:
    """The peer's own metric values beside clrepro's metric code on the very same matrix files."""
    from clrepro.metrics.cl import compute_cl_metrics
    from clrepro.metrics.io import read_acc_matrix, read_joint_row

    diffs: dict[str, list[float]] = {}
    for f in sorted((runs / peer / pair["id"] / peer).glob("seed*/metrics.json")):
        rec, d = json.loads(f.read_text()), f.parent
        if not (d / "acc.csv").is_file():
            continue

        def ref(kind, reader):
            p = d / f"ref{kind}" / "acc.csv"
            return reader(p) if p.is_file() else None

        m = compute_cl_metrics(read_acc_matrix(d / "acc.csv"), independent=ref("independent", read_acc_matrix),
                               joint=ref("joint", read_joint_row), random=ref("random", read_acc_matrix))
        for k in ("AA", "BWT", "FWT", "FR"):
            if rec.get(k) is not None and m.get(k) is not None:
                diffs.setdefault(k, []).append(abs(float(rec[k]) - float(m[k])))
    return [{"peer": peer, "pair": pair["id"], "metric": k, "files": len(v), "max_abs_diff": max(v)}
            for k, v in diffs.items()]


def markdown(rows: list[dict], code_rows: list[dict], margin: float, envs: dict, locks: dict | None = None) -> str:
    import datetime

    out = ["Produced by `make parity` (runners: `benchmarks/parity/{clrepro_runner,peers/<peer>_runner}.py`, one torch "
           "thread each; this table: `python benchmarks/parity/compare.py --runs $PARITY_CACHE/runs`) on "
           f"{datetime.date.today().isoformat()}. n = seeds both tools finished, from the runs cache and the committed "
           "seed ledger `results/seeds.jsonl` (the pairs list 20; a partial run compares what it has). Wall times come from runners sharing the machine with other work: compare them "
           "within a row, not across rows.", ""]
    out += [f"Equivalence: TOST (two one-sided Welch tests) at ±{margin:g} AA points, α = 0.05; power at a true "
           "difference of 0 with the observed spreads; n_80 = seeds per side for 80 % power. A row the seeds leave "
           "undecided (no difference shown, none excluded) reads 'equivalent (lockstep)' when the lockstep runs below "
           "decide it: the same start and batch order in both tools, a paired TOST on AA at the same margin, identical "
           "inputs, and each tool's own initial draw from the same distribution. Values are "
           "percent, mean ± sample std over seeds; diff = clrepro − peer. s/run: median wall seconds of one seed's "
           "main run inside the runner process (imports and reference runs excluded).", ""]
    out.append("| peer | pair | metric | n | peer | clrepro | diff | Welch p | TOST p | verdict | power | n_80 "
               "| peer s/run | clrepro s/run | speed-up |")
    out.append("|" + "---|" * 15)
    for r in rows:
        out.append("| " + " | ".join(str(r.get(k, "")) for k in (
            "peer", "pair", "metric", "n_clrepro", "peer_value", "clrepro_value", "diff", "welch_p", "tost_p",
            "verdict", "power", "n_for_80", "peer_wall_s", "clrepro_wall_s", "speedup")) + " |")
    if locks:
        out += ["", "Lockstep runs (`make parity-lockstep`): the peer's own pipeline replays clrepro's initial weights "
                "and batch order (benchmarks/parity/lockstep.py, peers/<peer>_lockstep.py), so seed noise is gone and "
                "what is left is the two implementations' arithmetic. weights: the largest relative difference "
                "(‖w_peer − w_clrepro‖/‖w_clrepro‖ per tensor) at the end of any epoch of any task; cells: the largest "
                "accuracy-matrix difference in points; float-noise floor: the same measure for clrepro against itself when "
                "every initial weight is scaled by 1 + 1e-7 (about one rounding), which training amplifies as it amplifies "
                "any difference in the order of floating-point operations; 'at the float-noise floor' = weights within "
                f"{lockstep_ledger.FLOOR_FACTOR:g}× of it; paired TOST at the same margin on the per-seed AA differences; "
                "init KS: the smallest two-sample KS p of the peer's own initial draw against clrepro's, over every "
                "tensor of every seed (Bonferroni-checked).", "",
                "| peer | pair | seeds | result | weights | float-noise floor | cells | max abs ΔAA | paired TOST p | init KS min p |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        for (peer, pid), lk in locks.items():
            ks = "" if lk["init_ks_min"] is None else f"{lk['init_ks_min']:.3f} ({lk['init_ks_tests']} tests)"
            tp = "" if lk["tost_p"] is None else f"{lk['tost_p']:.4f}"
            fl = "" if lk.get("floor_weight_rel") is None else f"{lk['floor_weight_rel']:.1e}"
            out.append(f"| {peer} | {pid} | {lk['n']} | {lk['status']} | {lk['max_weight_rel']:.1e} | {fl} | "
                       f"{lk['max_cell_points']:.2f} | {lk['max_abs_aa_points']:.2f} | {tp} | {ks} |")
    causes = [r for r in rows if r.get("cause")]
    if causes:
        out += ["", "Notes on the rows: why a row is not shown equivalent, or what an equivalent one hides:", ""]
        out += [f"- **{r['peer']}/{r['pair']}** ({r['verdict']}): {r['cause']}" for r in causes]
    if code_rows:
        out += ["", "Metric code on the same files (the peer's matrices scored by the peer and by clrepro):", "",
                "| peer | pair | metric | files | max abs diff |", "|---|---|---|---|---|"]
        out += [f"| {r['peer']} | {r['pair']} | {r['metric']} | {r['files']} | {r['max_abs_diff']:.2e} |"
                for r in code_rows]
    out += ["", "Environments:", ""]
    for name, env in envs.items():
        if env:
            v = env.get("versions", {})
            out.append(f"- {name}: {env.get('tool')} {v.get(env.get('tool'), env.get('version', ''))}, python "
                       f"{env.get('python')}, torch {env.get('torch')}, threads {env.get('threads')}, {env.get('cpu')}")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", required=True, type=Path, help="the runs folder (<runs>/<peer>/<pair>/<tool>/seed<k>)")
    ap.add_argument("--pairs", nargs="+", type=Path, default=sorted((HERE / "pairs").glob("*.yaml")))
    ap.add_argument("--only", nargs="*", default=None, help="peer/pair ids to include")
    ap.add_argument("--margin", type=float, default=1.0)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--lockstep", type=Path, help="lockstep reports (<dir>/<peer>/<pair>/seed<k>/report.json); "
                                                  "default: lockstep/ beside the runs folder, where it exists")
    args = ap.parse_args()
    import tempfile

    import ledger

    lockdir = args.lockstep or (args.runs.parent / "lockstep")
    lock_path = args.out / "lockstep.jsonl"
    lock_book = lockstep_ledger.read(lock_path)
    locks = {}

    book_path = args.out / "seeds.jsonl"
    book = ledger.read(book_path)
    previous_envs = json.loads((args.out / "environments.json").read_text()) if (
        args.out / "environments.json").is_file() else {}
    rows, code_rows, envs = [], [], {}
    with tempfile.TemporaryDirectory(prefix="parity-merged-") as tmp:
        merged = Path(tmp)  # the ledger's seeds and the cache's, as one runs folder
        for pf in args.pairs:
            spec = load_pairs(pf)
            peer = spec["peer"]
            for pid in spec["pairs"]:
                if args.only and f"{peer}/{pid}" not in args.only and peer not in args.only:
                    continue
                pair = resolve(pf, pid)
                ledger.merge(book, args.runs, peer, pair)
                ledger.materialize(book, peer, pair, merged)
                lockstep_ledger.merge(lock_book, lockdir if lockdir.is_dir() else None, peer, pair)
                lock = lockstep_ledger.summary(lock_book, peer, pair, args.margin)
                if lock:
                    locks[(peer, pid)] = lock
                rows += pair_rows(peer, pair, merged, args.margin, lock)
                code_rows += metric_code_rows(peer, pair, merged)
            # versions: this cache's runners where it has them, else the ones the ledger's seeds recorded
            for name, pattern in ((peer, f"*/{peer}/env.json"), ("clrepro", "*/clrepro/env.json")):
                found = sorted((args.runs / peer).glob(pattern))[:1]
                envs[name] = json.loads(found[0].read_text()) if found else previous_envs.get(name, {})
    args.out.mkdir(parents=True, exist_ok=True)
    ledger.write(book_path, book)
    lockstep_ledger.write(lock_path, lock_book)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "parity.md").write_text(markdown(rows, code_rows, args.margin, envs, locks))
    keys = sorted({k for r in rows for k in r}, key=lambda k: list(rows[0]).index(k) if k in rows[0] else 99)
    with open(args.out / "parity.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    (args.out / "environments.json").write_text(json.dumps(envs, indent=2))
    print((args.out / "parity.md").read_text())


if __name__ == "__main__":
    main()
