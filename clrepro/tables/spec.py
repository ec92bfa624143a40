"""The table spec (`paper_tables/*.yaml`): rows, columns, run selectors, published numbers, tolerance."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clrepro.config.hparams import build, hp, read_mapping
from clrepro.config.schema import METRICS as METRIC_NAMES  # AA, BWT, FWT, FR, AA_remaining, DD, AGR
from clrepro.errors import ConfigError
from clrepro.limits import SEED_MAX


@dataclass
class Column:
    benchmark: str = hp(doc="benchmark key, as in the published CSV")
    metric: str = hp(choices=METRIC_NAMES)
    label: str = hp("", doc="column header (default 'benchmark metric')")
    published_benchmark: str | None = hp(None, doc="the benchmark's key in the published CSV (default: benchmark)")


@dataclass
class Selector:
    """Which seed runs fill a cell: a sweep's group, an experiment's seeds, or run folders."""

    sweep: str | None = hp(None, doc="sweep name (MLflow experiment); the latest finished sweep of that name")
    group: str = hp("final", choices=("final", "search"), doc="sweep group")
    sweep_run: str | None = hp(None, doc="pin a sweep's parent run id instead of the latest")
    experiment: str | None = hp(None, doc="experiment config name (runs produced by `clrepro table --run`)")
    overrides: list[str] = hp([], doc="the experiment's dotted overrides")
    seeds: list[int] = hp([], low=0, high=SEED_MAX, unique=True, doc="the experiment's seeds")
    folders: str | None = hp(None, doc="glob of `clrepro run` folders (relative to the spec file)")
    sweep_file: str | None = hp(None, doc="sweep file that produces these runs (`--run`)")


@dataclass
class Row:
    label: str = hp(doc="row label")
    approach: str | None = hp(None, doc="the approach's name in the published CSV")
    runs: dict[str, Selector] = field(default_factory=dict)  # benchmark → selector
    note: str = hp("", doc="shown for rows without runs (e.g. 'algorithm not built yet')")
    gain_of: str | None = hp(None, doc="a gain row: the per-seed difference (row gain_of) − (row gain_over), "
                                       "paired by seed, e.g. FL-oEWC − oEWC at the same budget")
    gain_over: str | None = hp(None, doc="the row the gain is measured against")


@dataclass
class Tolerance:
    rule: str = hp("std", choices=("std", "points", "none"),
                   doc="std: |Δ| ≤ value × published std; points: |Δ| ≤ value; none: no verdict")
    value: float = hp(1.0, low=0.0)


@dataclass
class TableSpec:
    title: str = hp(doc="table title")
    columns: list[Column] = hp(min_len=1, doc="benchmark × metric columns")
    rows: list[Row] = hp(min_len=1, doc="approaches")
    source: dict[str, str] = field(default_factory=dict)  # paper, table, url/doi
    published: str | None = hp(None, doc="published CSV (approach, benchmark, metric, mean, std[, n])")
    published_n: dict[str, int] = hp({}, low=2, doc="seeds behind the published numbers per published benchmark "
                                                     "(for Welch's t-test)")
    published_scale: float = hp(1.0, low=0.0, low_open=True, doc="multiplies published values to the display scale")
    scale: float = hp(100.0, low=0.0, low_open=True, doc="multiplies reproduced fractions (100: percent)")
    decimals: int = hp(2, low=0, high=6)
    tolerance: Tolerance = field(default_factory=Tolerance)
    tracking_uri: str = hp("sqlite:///mlflow.db", doc="MLflow store the runs are read from")
    notes: list[str] = hp([], doc="footnotes")
    regenerate: bool = hp(True, doc="CI regenerates this table and compares it with paper_tables/ci/expected/")


def load_table(path: str | Path) -> TableSpec:
    """Read and validate a table spec; problems are one line naming the file, key and allowed values."""
    path = Path(path)
    raw = read_mapping(path, "table spec")
    try:
        spec = build(TableSpec, raw, "table", extra_ok=())
        benchmarks = {c.benchmark for c in spec.columns}
        for i, row in enumerate(spec.rows):
            for bench, sel in row.runs.items():
                key = f"rows[{i}].runs.{bench}"
                if bench not in benchmarks:
                    raise ConfigError(key, f"'{bench}' is not a column benchmark", sorted(benchmarks))
                kinds = [k for k in ("sweep", "experiment", "folders") if getattr(sel, k)]
                if len(kinds) != 1:
                    raise ConfigError(key, "needs exactly one of sweep, experiment, folders", None)
                if sel.experiment and not sel.seeds:
                    raise ConfigError(f"{key}.seeds", "an experiment selector needs its seeds", None)
            labels = [r.label for r in spec.rows if not r.gain_of]
            if (row.gain_of is None) != (row.gain_over is None):
                raise ConfigError(f"rows[{i}].gain_over", "a gain row needs both gain_of and gain_over", labels)
            for k in ("gain_of", "gain_over"):
                if getattr(row, k) is not None and getattr(row, k) not in labels:
                    raise ConfigError(f"rows[{i}].{k}", f"no row '{getattr(row, k)}'", labels)
            if row.gain_of and row.runs:
                raise ConfigError(f"rows[{i}].runs", "a gain row takes its values from gain_of and gain_over")
    except ConfigError as e:
        raise e.located(str(path), strip="table.") from None
    if spec.published:
        pub = (path.parent / spec.published)
        if not pub.is_file():
            raise ConfigError("published", f"file {pub} not found", None, str(path))
        spec.published = str(pub)
        from clrepro.tables.aggregate import read_published

        read_published(pub, spec.published_scale)  # a broken published CSV is reported before any run
    for i, row in enumerate(spec.rows):
        for bench, sel in row.runs.items():
            if sel.folders and not Path(sel.folders).is_absolute():
                sel.folders = str(path.parent / sel.folders)
            if sel.sweep_file and not Path(sel.sweep_file).is_absolute():
                sel.sweep_file = str((path.parent / sel.sweep_file).resolve())
            if sel.sweep_file and not Path(sel.sweep_file).is_file():
                raise ConfigError(f"rows[{i}].runs.{bench}.sweep_file", f"file {sel.sweep_file} not found", None,
                                  str(path))
    return spec


def column_label(c: Column) -> str:
    return c.label or f"{c.benchmark} {c.metric}"


def spec_dict(spec: TableSpec) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(spec)
