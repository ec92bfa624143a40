"""Regenerate the CI-scale tables into a clean tracking store and compare them with the committed outputs.

Usage: python ci/regenerate_tables.py [--update] [--out DIR] [TABLE.yaml ...]   (default: paper_tables/ci/*.yaml)
For each table with `regenerate: true`: produce its runs (`--run`) in a fresh MLflow store, render its
CSV, and compare with paper_tables/ci/expected/<name>.csv. The comparison tolerates what another
machine can change (floating-point kernels: |Δ| ≤ ATOL display points on means and stds, default 0.5,
env CLREPRO_TABLE_ATOL) and fails on drift: a different row, column, seed set, n or published value,
or a number further off. On the machine that wrote the expected files the numbers are identical.
Seed runs go `--jobs` at a time (default: the CPU count), each with one torch thread, so the numbers do not
depend on the machine's core count. `--update` rewrites the expected files instead; `--out DIR` also writes each regenerated table there as
Markdown, LaTeX, CSV and a plot (CI uploads them).
"""

from __future__ import annotations

import argparse
import csv
import io
import os
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


def compare(name: str, got: str, expected: str, atol: float) -> list[str]:
    """Differences beyond what a changed machine explains ([] when the tables agree)."""
    g = list(csv.DictReader(io.StringIO(got)))
    e = list(csv.DictReader(io.StringIO(expected)))
    if len(g) != len(e):
        return [f"{name}: {len(g)} cells, expected {len(e)}"]
    problems = []
    for a, b in zip(g, e):
        where = f"{name}: {b['row']} / {b['benchmark']} {b['metric']}"
        for k in EXACT:
            if a[k] != b[k]:
                problems.append(f"{where}: {k} is {a[k]!r}, expected {b[k]!r}")
        for k in CLOSE:
            if (a[k] == "") != (b[k] == ""):
                problems.append(f"{where}: {k} is {a[k]!r}, expected {b[k]!r}")
            elif a[k] and abs(float(a[k]) - float(b[k])) > atol:
                problems.append(f"{where}: {k} drifted to {float(a[k]):.4f} from {float(b[k]):.4f} (> {atol})")
    return problems


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
    atol = float(os.environ.get("CLREPRO_TABLE_ATOL", "0.5"))
    failures = []
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
                print(f"  wrote {expected_file.relative_to(ROOT)}")
                continue
            problems = compare(path.stem, got, expected_file.read_text(), atol)
            failures += problems
            print(f"  {'OK' if not problems else 'DRIFT'}: {path.stem}")
    for p in failures:
        print(f"drift: {p}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
