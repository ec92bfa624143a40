"""`clrepro table SPEC [--run] [--out DIR]`: the paper's table from logged runs, beside the published numbers."""

from __future__ import annotations

from pathlib import Path


def main(args) -> int:
    from clrepro.console import console
    from clrepro.tables.render import to_rich, write_all
    from clrepro.tables.sources import RunReader
    from clrepro.tables.spec import load_table
    from clrepro.tables.table import build_table
    from clrepro.files import check_output_dir
    from clrepro.tracking.mlflow_store import checked_tracking_uri

    spec = load_table(args.spec)
    given = args.tracking_uri is not None  # an empty --tracking-uri is refused, never read as "not given"
    spec.tracking_uri = checked_tracking_uri(args.tracking_uri if given else spec.tracking_uri,
                                             "--tracking-uri" if given else "tracking_uri",
                                             None if given else args.spec)
    if args.out:
        check_output_dir(args.out, "--out", must_be_new=False)  # before any run is produced
    reader = RunReader(spec.tracking_uri)
    if args.run:
        from clrepro.tables.produce import produce_missing

        produce_missing(spec, reader, log=lambda msg: console.print(f"[dim]{msg}[/dim]"), jobs=args.jobs)
    table = build_table(spec, reader)
    console.print(to_rich(table))
    for row, note in zip(spec.rows, table.row_notes):
        if note:
            console.print(f"[dim]{row.label}: {note}[/dim]")
    stem = Path(args.spec).stem
    if args.out:
        files = write_all(table, Path(args.out), stem)
        console.print(f"wrote {', '.join(str(f) for f in files.values())}")
        if not args.no_log:
            log_table(spec.tracking_uri, stem, files)
    if not any(c.n for row in table.cells for c in row):
        console.print("[yellow]no runs found for this table: produce them with --run "
                      "(or run the sweeps and experiments it names)[/yellow]")
    return 0


def log_table(tracking_uri: str, stem: str, files: dict) -> None:
    """The rendered files as artifacts of a run in the MLflow experiment 'tables'."""
    from clrepro.tracking.mlflow_store import LEVEL, TAG, MlflowStore

    store = MlflowStore(tracking_uri)
    store.ensure_experiment("tables")
    run_id = store.create_run(stem, {LEVEL: "table", TAG + "table": stem})
    folder = next(iter(files.values())).parent
    store.log_artifacts(run_id, folder)
    store.set_status(run_id, "FINISHED")
