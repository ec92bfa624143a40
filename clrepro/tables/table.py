"""Build a table: every row × column cell filled from its selector's seed runs, beside the published value."""

from __future__ import annotations

from dataclasses import dataclass, field

from clrepro.tables.aggregate import Cell, Published, read_published
from clrepro.tables.sources import RunReader, SeedValues
from clrepro.tables.spec import TableSpec, column_label


@dataclass
class Table:
    spec: TableSpec
    cells: list[list[Cell]]  # [row][column]
    origins: list[list[list[SeedValues]]] = field(default_factory=list)
    row_notes: list[str] = field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        return [column_label(c) for c in self.spec.columns]


def build_table(spec: TableSpec, reader: RunReader | None = None) -> Table:
    """Read each row's runs per benchmark and aggregate them per column (display scale = spec.scale)."""
    reader = reader or RunReader(spec.tracking_uri)
    published = read_published(spec.published, spec.published_scale) if spec.published else {}
    cells, origins, notes = [], [], []
    for row in spec.rows:
        per_bench = {bench: reader.read(sel) for bench, sel in row.runs.items()}
        crow, orow = [], []
        for col in spec.columns:
            seeds = per_bench.get(col.benchmark, [])
            values = [spec.scale * s.metrics[col.metric] for s in seeds if s.metrics.get(col.metric) is not None]
            bench = col.published_benchmark or col.benchmark
            pub = published.get((row.approach or row.label, bench, col.metric))
            if pub is not None and pub.n is None:
                pub = Published(pub.mean, pub.std, spec.published_n.get(bench))
            crow.append(Cell(values, pub, spec.tolerance.rule, spec.tolerance.value))
            orow.append(seeds)
        cells.append(crow)
        origins.append(orow)
        notes.append(row.note if not (row.runs or row.gain_of) else "")
    _fill_gains(spec, cells, origins)
    return Table(spec, cells, origins, notes)


def _fill_gains(spec: TableSpec, cells: list[list[Cell]], origins: list[list[list[SeedValues]]]) -> None:
    """Gain rows: per column, (gain_of − gain_over) for each seed both rows have (paired by seed)."""
    index = {r.label: i for i, r in enumerate(spec.rows) if not r.gain_of}
    for i, row in enumerate(spec.rows):
        if not row.gain_of:
            continue
        a, b = index[row.gain_of], index[row.gain_over]
        for j, col in enumerate(spec.columns):
            va = {s.seed: s.metrics.get(col.metric) for s in origins[a][j]}
            vb = {s.seed: s.metrics.get(col.metric) for s in origins[b][j]}
            seeds = [s for s in va if s in vb and va[s] is not None and vb[s] is not None]
            values = [spec.scale * (va[s] - vb[s]) for s in seeds]
            cells[i][j] = Cell(values, None, "none", 0.0)
            origins[i][j] = [SeedValues(s, {col.metric: va[s] - vb[s]}, f"gain:{row.gain_of}-{row.gain_over}")
                             for s in seeds]
