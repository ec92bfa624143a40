"""The committed lockstep ledger (results/lockstep.jsonl): one compact record per replayed seed, and its summary.

A lockstep report (peers/<peer>_lockstep.py writes <lockstep>/<peer>/<pair>/seed<k>/report.json) holds, per task
and epoch, the relative difference of every weight. The ledger keeps what the table needs: per task the largest
difference per epoch, the input-match and first-batch checks and the initialisation KS p-values, plus both accuracy
matrices; keyed by (peer, pair, seed) and stamped with the pair's protocol hash (ledger.pair_hash).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ledger import pair_hash
from stats import paired_tost

FLOAT_PRECISION = 1e-5  # largest relative weight difference still called "equal to float precision"
# "at the float-noise floor": no larger than FLOOR_FACTOR × what clrepro differs from itself when every initial
# weight is scaled by 1 + 1e-7 (about one rounding); training amplifies either the same way
FLOOR_FACTOR = 2.0


def compact(report: dict, floor: dict | None = None) -> dict:
    """The ledger record of one report.json (and of the float-noise control beside it, floor.json)."""
    tasks = {}
    for t, r in report["tasks"].items():
        tasks[t] = {"epoch_max": [max(e.values()) if e else 0.0 for e in r["epochs"]],
                    "match": r.get("match_max_distance"), "first_batch": r.get("first_batch_max_diff"),
                    "labels_equal": r.get("first_batch_labels_equal"), "init_ks": r.get("init_ks", {})}
    out = {"seed": int(report["seed"]), "tasks": tasks, "acc_peer": report.get("acc_peer", report.get("acc_clarena")),
           "acc_clrepro": report["acc_clrepro"], "control_overrides": report.get("control_overrides", [])}
    if floor:
        out["floor"] = {"perturb": floor["perturb"], "epoch_max": {t: e for t, e in floor["epochs"].items()},
                        "acc_max_abs_diff": floor["acc_max_abs_diff"]}
    return out


def read(path: Path) -> dict[tuple, dict]:
    out = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                out[(r["_peer"], r["_pair"], int(r["seed"]), r["_hash"])] = r
    return out


def merge(book: dict[tuple, dict], lockdir: Path | None, peer: str, pair: dict) -> None:
    """Add every report.json of this pair under lockdir (negative controls excluded: they must differ)."""
    if lockdir is None:
        return
    h = pair_hash(pair)
    for f in sorted((lockdir / peer / pair["id"]).glob("seed*/report.json")):
        fl = f.parent / "floor.json"
        rec = compact(json.loads(f.read_text()), json.loads(fl.read_text()) if fl.is_file() else None)
        if rec["control_overrides"]:
            continue
        rec.update(_peer=peer, _pair=pair["id"], _hash=h)
        book[(peer, pair["id"], rec["seed"], h)] = rec


def write(path: Path, book: dict[tuple, dict]) -> None:
    lines = [json.dumps(book[k], sort_keys=True) for k in sorted(book, key=lambda k: tuple(map(str, k)))]
    path.write_text("\n".join(lines) + ("\n" if lines else ""))


def summary(book: dict[tuple, dict], peer: str, pair: dict, margin: float, points: float = 100.0) -> dict | None:
    """The pair's lockstep result over its replayed seeds, or None when it has none."""
    h = pair_hash(pair)
    recs = [r for (p, pid, _, hh), r in sorted(book.items()) if (p, pid, hh) == (peer, pair["id"], h)]
    if not recs:
        return None
    worst = max(max(e for t in r["tasks"].values() for e in t["epoch_max"]) for r in recs)
    cells = [np.abs(np.asarray(r["acc_clrepro"], float) - np.asarray(r["acc_peer"], float)) for r in recs]
    cell = float(max(np.nanmax(c) for c in cells)) * points
    aa = [(float(np.nanmean(np.asarray(r["acc_clrepro"], float)[-1])) -
           float(np.nanmean(np.asarray(r["acc_peer"], float)[-1]))) * points for r in recs]
    ks = [p for r in recs for t in r["tasks"].values() for p in t["init_ks"].values()]
    inputs_ok = all(t["match"] == 0 and t["first_batch"] == 0 and t["labels_equal"] is not False
                    for r in recs for t in r["tasks"].values())
    floors = [max(e for es in r["floor"]["epoch_max"].values() for e in es) for r in recs if r.get("floor")]
    floor = max(floors) if len(floors) == len(recs) else None
    # bitwise: every weight at every epoch equal to the bit (the matrices then differ only in how each tool averages
    # its accuracies: ~1e-16)
    status = ("bitwise equal" if worst == 0 and cell <= 1e-9 else
              "equal to float precision" if worst <= FLOAT_PRECISION else
              "at the float-noise floor" if floor is not None and worst <= FLOOR_FACTOR * floor else
              "differs")
    t = paired_tost(aa, margin) if len(aa) > 1 else None
    ks_min = min(ks) if ks else None
    ks_ok = ks_min is None or ks_min >= 0.05 / len(ks)  # Bonferroni over every tensor of every seed
    return {"n": len(recs), "status": status, "max_weight_rel": worst, "floor_weight_rel": floor, "max_cell_points": round(cell, 4),
            "max_abs_aa_points": round(max(abs(a) for a in aa), 4), "tost_p": None if t is None else t["p"],
            "equivalent": bool(t and t["equivalent"] and inputs_ok and ks_ok), "inputs_identical": inputs_ok,
            "init_ks_min": ks_min, "init_ks_tests": len(ks), "init_same_distribution": ks_ok}
