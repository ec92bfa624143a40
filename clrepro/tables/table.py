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
        notes.append(row.note if not row.runs else "")
    return Table(spec, cells, origins, notes)
