"""Read a parity pairs file and resolve one pair: `common` deep-merged with `pairs.<id>`."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml


def _merge(base: dict, over: dict, path: tuple = ()) -> dict:
    """Deep merge; lists replace, except clrepro.overrides, which concatenate (common first)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        here = (*path, k)
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v, here)
        elif here == ("clrepro", "overrides") and isinstance(out.get(k), list):
            out[k] = out[k] + list(v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_pairs(path: str | Path) -> dict:
    """The whole pairs file (peer, common, pairs)."""
    spec = yaml.safe_load(Path(path).read_text())
    if not isinstance(spec, dict) or not isinstance(spec.get("pairs"), dict):
        raise SystemExit(f"{path}: a pairs file needs a `pairs:` mapping")
    return spec


def resolve(path: str | Path, pair: str) -> dict:
    """One pair's settings, with `id`, `tool` (the peer's name) and the seed list filled in."""
    spec = load_pairs(path)
    if pair not in spec["pairs"]:
        raise SystemExit(f"{path}: unknown pair '{pair}' (allowed: {', '.join(spec['pairs'])})")
    out = _merge(spec.get("common") or {}, spec["pairs"][pair] or {})
    out["id"], out["tool"] = pair, spec.get("peer")  # `peer` stays the merged peer settings
    out["seed_list"] = _seeds(out.get("seeds", {"first": 1, "count": 5}))
    # The seeds that also get reference runs (FWT, FR); default: all of them.
    out["reference_seed_list"] = _seeds(out["reference_seeds"]) if "reference_seeds" in out else out["seed_list"]
    # The seeds of the lockstep runs (make parity-lockstep); default: the first 5.
    out["lockstep_seed_list"] = _seeds(out["lockstep_seeds"]) if "lockstep_seeds" in out else out["seed_list"][:5]
    return out


def _seeds(s) -> list[int]:
    """A seed list, or {first, count}."""
    return list(s) if isinstance(s, list) else list(range(s["first"], s["first"] + s["count"]))
