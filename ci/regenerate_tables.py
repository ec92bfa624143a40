"""Regenerate the CI-scale tables into a clean tracking store and compare them with the committed outputs.

Usage: python ci/regenerate_tables.py [--update] [--out DIR] [TABLE.yaml ...]   (default: paper_tables/ci/*.yaml)
For each table with `regenerate: true`: produce its runs (`--run`) in a fresh MLflow store, render its
CSV, and compare with paper_tables/ci/expected/<name>.csv. Rows, columns, seed sets, n and published values
must match exactly. Means and stds: on the machine kind that wrote the expected file (same CPU flags, torch
kernel capability and torch version, recorded beside it in <name>.machine.json) they are identical, and
|Δ| ≤ ATOL display points (default 0.5, env CLREPRO_TABLE_ATOL) is required. On another machine kind the
float kernels differ (AVX2 against AVX-512 paths, MKL's dispatch), and training amplifies a rounding as much
as a change of seed (one 20-task Finetuning seed: AA 35.59 with AVX-512 kernels, 36.34 with AVX2, same
code): there a cell beyond ATOL passes only as seed noise, when Welch's test on the two n-seed samples (an F
test for stds) does not reject at a family-wise α (default 0.05, env CLREPRO_TABLE_ALPHA, Bonferroni over
the table's tested cells); every such cell is printed.
Seed runs go `--jobs` at a time (default: the CPU count), each with one torch thread, so the numbers do not
depend on the machine's core count. `--update` rewrites the expected files instead; `--out DIR` also writes each regenerated table there as
Markdown, LaTeX, CSV and a plot (CI uploads them).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = ROOT / "paper_tables" / "ci" / "expected"
EXACT = ("row", "benchmark", "metric", "n", "published_mean", "published_std", "published_n", "seeds")
CLOSE = ("mean", "std")


def regenerate(spec_path: Path, tracking_uri: str, out: Path | None = None, jobs: int = 1) -> str:
    from clrepro.tables.produce import produce_missing
    from clrepro.tables.render import to_csv
    from clrepro.tables.sources import RunReader
    from clrepro.tables.spec import load_table
    from clrepro.tables.table import build_table

    spec = load_table(spec_path)
    spec.tracking_uri = tracking_uri
    reader = RunReader(tracking_uri)
    produce_missing(spec, reader, log=lambda m: print(f"  {m}", flush=True), jobs=jobs)
    table = build_table(spec, RunReader(tracking_uri))
    if out is not None:
        from clrepro.tables.render import write_all

        write_all(table, out, spec_path.stem)
    return to_csv(table)


def machine_kind() -> dict:
    """What decides a run's float arithmetic here: CPU model and flags, torch's kernel capability, torch."""
    import torch

    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    first = lambda key: next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith(key)), "")
    return {"cpu": first("model name") or platform.processor(), "arch": platform.machine(),
            "cpu_family_model": first("cpu family") + "/" + first("model\t"),
            "cpu_flags_sha1": hashlib.sha1(" ".join(sorted(first("flags").split())).encode()).hexdigest()[:12],
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__}


def _noise_p(kind: str, a: dict, b: dict) -> float | None:
    """p of 'both cells are draws of one seed distribution' (Welch on means, F on stds); None: untestable."""
    from scipy import stats

    from clrepro.tables.aggregate import welch_p

    n1, n2 = int(a["n"] or 0), int(b["n"] or 0)
    if n1 < 2 or n2 < 2 or not a["std"] or not b["std"]:
        return None
    s1, s2 = float(a["std"]), float(b["std"])
    if kind == "mean":
        return welch_p(float(a["mean"]), s1, n1, float(b["mean"]), s2, n2)
    if s1 == 0 or s2 == 0:
        return None
    f = (s1 / s2) ** 2
    tail = stats.f.sf(f, n1 - 1, n2 - 1) if f > 1 else stats.f.cdf(f, n1 - 1, n2 - 1)
    return float(min(1.0, 2 * tail))


def compare(name: str, got: str, expected: str, atol: float, same_machine: bool = True,
            alpha: float = 0.05) -> tuple[list[str], list[str]]:
    """(drifts, notes): differences beyond what a changed machine explains, and cells passed as seed noise."""
    g = list(csv.DictReader(io.StringIO(got)))
    e = list(csv.DictReader(io.StringIO(expected)))
    if len(g) != len(e):
        return [f"{name}: {len(g)} cells, expected {len(e)}"], []
    problems, beyond = [], []
    tested = sum(1 for b in e for k in CLOSE if b[k] and int(b["n"] or 0) >= 2)
    for a, b in zip(g, e):
        where = f"{name}: {b['row']} / {b['benchmark']} {b['metric']}"
        for k in EXACT:
            if a[k] != b[k]:
                problems.append(f"{where}: {k} is {a[k]!r}, expected {b[k]!r}")
        for k in CLOSE:
            if (a[k] == "") != (b[k] == ""):
                problems.append(f"{where}: {k} is {a[k]!r}, expected {b[k]!r}")
            elif a[k] and abs(float(a[k]) - float(b[k])) > atol:
                beyond.append((where, k, a, b))
    notes = []
    for where, k, a, b in beyond:
        moved = f"{where}: {k} {float(b[k]):.4f} -> {float(a[k]):.4f}"
        p = None if same_machine else _noise_p(k, a, b)
        if p is None or p < alpha / max(1, tested):
            why = "on the machine kind that wrote it" if same_machine else \
                "untestable as seed noise" if p is None else f"beyond seed noise: p {p:.2g} < {alpha}/{tested}"
            problems.append(f"{moved} (> {atol}; {why})")
        else:
            notes.append(f"{moved} (> {atol}, another machine kind: seed noise, p {p:.2g} ≥ {alpha}/{tested})")
    return problems, notes


def same_machine_as(expected_file: Path, kind: dict | None = None) -> bool:
    """Whether this machine (`kind`, default machine_kind()) wrote `expected_file` (False when not recorded)."""
    side = expected_file.with_suffix(".machine.json")
    return side.exists() and json.loads(side.read_text()) == (kind or machine_kind())


def _env_number(name: str, default: str, allowed: str, ok) -> float:
    """A float from the environment, or one line naming the variable and what it allows (exit 2)."""
    raw = os.environ.get(name, default)
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not ok(value):
        print(f"error: ${name}={raw!r}: allowed: {allowed}", file=sys.stderr)
        sys.exit(2)
    return value


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tables", nargs="*", type=Path)
    ap.add_argument("--update", action="store_true", help="rewrite the expected CSVs")
    ap.add_argument("--out", type=Path, help="also write the regenerated tables here (md, tex, csv, png)")
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("CLREPRO_TABLE_JOBS", os.cpu_count() or 1)),
                    help="seed runs at once, one torch thread each (default: the CPU count, or $CLREPRO_TABLE_JOBS)")
    args = ap.parse_args(argv)
    import yaml

    tables = [p.resolve() for p in args.tables] or sorted((ROOT / "paper_tables" / "ci").glob("*.yaml"))
    atol = _env_number("CLREPRO_TABLE_ATOL", "0.5", "a number ≥ 0", lambda v: v >= 0)
    alpha = _env_number("CLREPRO_TABLE_ALPHA", "0.05", "a number in (0, 1)", lambda v: 0 < v < 1)
    failures = []
    here = machine_kind()
    with tempfile.TemporaryDirectory() as d:
        uri = f"sqlite:///{d}/mlflow.db"
        for path in tables:
            if not (yaml.safe_load(path.read_text()) or {}).get("regenerate", True):
                continue
            print(f"regenerating {path.relative_to(ROOT)}", flush=True)
            t0 = time.perf_counter()
            got = regenerate(path, uri, args.out.resolve() if args.out else None, args.jobs)
            print(f"  {path.stem}: {time.perf_counter() - t0:.0f} s", flush=True)
            expected_file = EXPECTED / f"{path.stem}.csv"
            if args.update or not expected_file.exists():
                EXPECTED.mkdir(parents=True, exist_ok=True)
                expected_file.write_text(got)
                expected_file.with_suffix(".machine.json").write_text(json.dumps(here, indent=1) + "\n")
                print(f"  wrote {expected_file.relative_to(ROOT)}")
                continue
            same = same_machine_as(expected_file, here)
            problems, notes = compare(path.stem, got, expected_file.read_text(), atol, same, alpha)
            failures += problems
            for n in notes:
                print(f"  noise: {n}", flush=True)
            kind = "the machine kind that wrote it" if same else "another machine kind (or one not recorded)"
            print(f"  {'OK' if not problems else 'DRIFT'}: {path.stem} (against {kind}; "
                  f"{len(notes)} cell(s) passed as seed noise)")
    for p in failures:
        print(f"drift: {p}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
