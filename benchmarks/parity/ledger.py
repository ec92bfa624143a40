"""The committed seed ledger: every finished parity seed's record, so seeds accumulate across machines.

A run folder (<runs>/<peer>/<pair>/<tool>/seed<k>) lives in a cache that a new machine does not have. Each
seed's metrics.json (and, for the peer's seeds, the matrices its metric code scored) is copied into
results/seeds.jsonl, one JSON object per line, keyed by (peer, pair, tool, seed) and stamped with the hash of
the pair's resolved settings: a pair whose protocol changed starts a new distribution instead of mixing with
seeds run under the old one. The cache wins over the ledger for the same key and hash.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

# Pair settings that do not change what a seed computes (which seeds, explanations, the peer's blocked note).
_NOT_PROTOCOL = ("seeds", "seed_list", "reference_seeds", "reference_seed_list", "lockstep", "lockstep_seeds",
                 "lockstep_seed_list", "explain")


def pair_hash(pair: dict) -> str:
    """12 hex digits of the resolved pair without its seed lists and prose: the protocol the seeds ran."""
    kept = {k: v for k, v in pair.items() if k not in _NOT_PROTOCOL}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _matrix(path: Path) -> list[list[str]] | None:
    """A matrix file's rows as the strings on disk (re-written byte for byte when restored)."""
    if not path.is_file():
        return None
    return [line.split(",") for line in path.read_text().splitlines()]


def folder_record(seed_dir: Path) -> dict:
    """metrics.json of one seed folder, with its matrices (acc, ref<kind>) as stored text."""
    rec = json.loads((seed_dir / "metrics.json").read_text())
    mats = {"acc": _matrix(seed_dir / "acc.csv")}
    for ref in sorted(seed_dir.glob("ref*/acc.csv")):
        mats[ref.parent.name] = _matrix(ref)
    rec["_matrices"] = {k: v for k, v in mats.items() if v is not None}
    return rec


def read(path: Path) -> dict[tuple, dict]:
    """(peer, pair, tool, seed, hash) -> record, from a ledger file (empty when there is none)."""
    out = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                out[(r["_peer"], r["_pair"], r["_tool"], int(r["seed"]), r["_hash"])] = r
    return out


def merge(ledger: dict[tuple, dict], runs: Path, peer: str, pair: dict) -> dict[tuple, dict]:
    """The ledger with every finished seed folder of this pair in the cache added (the cache wins)."""
    h = pair_hash(pair)
    for tool in ("clrepro", peer):
        for f in sorted((runs / peer / pair["id"] / tool).glob("seed*/metrics.json")):
            rec = folder_record(f.parent)
            rec.update(_peer=peer, _pair=pair["id"], _tool=tool, _hash=h)
            ledger[(peer, pair["id"], tool, int(rec["seed"]), h)] = rec
    return ledger


def materialize(ledger: dict[tuple, dict], peer: str, pair: dict, dst: Path) -> int:
    """Write the pair's seeds of the current protocol as run folders under dst (<peer>/<pair>/<tool>/seed<k>),
    metrics.json and matrix files byte for byte as the runners wrote them; returns how many."""
    h, n = pair_hash(pair), 0
    for (p, pid, tool, seed, hh), rec in ledger.items():
        if (p, pid, hh) != (peer, pair["id"], h):
            continue
        d = dst / peer / pid / tool / f"seed{seed}"
        d.mkdir(parents=True, exist_ok=True)
        mats = rec.get("_matrices", {})
        (d / "metrics.json").write_text(json.dumps({k: v for k, v in rec.items() if not k.startswith("_")},
                                                   indent=2))
        for name, rows in mats.items():
            f = d / "acc.csv" if name == "acc" else d / name / "acc.csv"
            f.parent.mkdir(exist_ok=True)
            f.write_text("\n".join(",".join(r) for r in rows) + "\n")
        n += 1
    return n


def write(path: Path, ledger: dict[tuple, dict]) -> None:
    """One line per record, sorted by key, so a new seed is a small diff."""
    lines = [json.dumps(ledger[k], sort_keys=True) for k in sorted(ledger, key=lambda k: tuple(map(str, k)))]
    path.write_text("\n".join(lines) + ("\n" if lines else ""))
