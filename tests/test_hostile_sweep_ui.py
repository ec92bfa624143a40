"""Hostile input to `clrepro sweep`, `table` and `ui` (variants, search spaces, resume state, tracking stores):
every case exits 2 with at most 4 lines, no traceback, before Ray or MLflow starts, and with no side effect
(nothing new in the working folder, a user's unrelated SQLite file byte for byte the same)."""

from __future__ import annotations

import os
import sqlite3
import sys
import types
from pathlib import Path

import pytest
import yaml

from clrepro.cli.main import main

from test_hostile_input import ROOT, sweep

LONG = "sqlite:///" + "x" * 300 + ".db"
POSTGRES = "postgresql://u:secret@127.0.0.1:1/db"


def space(key: str, **dim) -> dict:
    return sweep(search_space={key: dim})


def storage(**changes) -> dict:
    return sweep(storage={"tracking_uri": "sqlite:///mlflow.db", "tune_path": "ray_results", **changes})


TABLE = {"title": "t", "columns": [{"benchmark": "pmnist", "metric": "AA"}],
         "rows": [{"label": "HAT", "runs": {"pmnist": {"folders": "runs/*"}}}]}
# Files a case may name: {name: text | bytes}; m.db (an unrelated SQLite database), l.db (a symlink to itself)
# and the sweep folders are made by the fixture.
FILES = {"garbage/tuner.pkl": b"this is not a pickle\n", "truncated/tuner.pkl": b"\x80\x04\x95\x10\x00\x00\x00",
         "ok_table.yaml": yaml.safe_dump(TABLE)}
SPECS = {
    "ok.yaml": sweep(),
    # 1. every variant is checked before the first one runs
    "v_late_override.yaml": sweep(variants={"a": {}, "b": {"overrides": ["trainer.epochz=3"]}}),
    "v_late_space.yaml": sweep(variants={"a": {}, "b": {"search_space": {
        "trainer.batch_size": {"type": "float", "low": 32, "high": 64}}}}),
    # 2. a dimension's values have the key's declared type
    "d_float_int.yaml": space("trainer.batch_size", type="float", low=32, high=64),
    "d_float_int_step.yaml": space("trainer.epochs", type="float", low=1, high=3, step=1),
    "d_float_component.yaml": space("benchmark.num_tasks", type="float", low=2, high=3),
    "d_float_bool.yaml": space("algorithm.anneal_offset_parity", type="float", low=0, high=1),
    "d_int_str.yaml": space("optimizer.name", type="int", low=0, high=1),
    "d_choice_float.yaml": space("trainer.batch_size", type="categorical", choices=[32.0, 64.0]),
    "d_choice_str.yaml": space("optimizer.lr", type="categorical", choices=["1e-3", "1e-2"]),
    # 3. a search-space key names one hyperparameter, not a group
    "g_algorithm.yaml": space("algorithm", type="categorical", choices=["hat", "ewc"]),
    "g_trainer.yaml": space("trainer", type="categorical", choices=[1, 2]),
    # 5. empty values
    "e_uri.yaml": storage(tracking_uri=""),
    "e_uri_blank.yaml": storage(tracking_uri="  "),
    "e_tune.yaml": storage(tune_path=""),
    # 6. variant names
    "n_int.yaml": sweep(variants={1: {}, "1": {}}),
    "n_null.yaml": sweep(variants={None: {}}),
    # 7. file names SQLite cannot open
    "u_long.yaml": storage(tracking_uri=LONG),
    "u_loop.yaml": storage(tracking_uri="sqlite:///l.db"),
    "u_devnull.yaml": storage(tracking_uri="sqlite:////dev/null"),
    # 8. an unrelated SQLite database
    "u_unrelated.yaml": storage(tracking_uri="sqlite:///m.db"),
    # 9. a database whose driver is not installed
    "u_postgres.yaml": storage(tracking_uri=POSTGRES),
}

CASES = [  # (id, argv, expected text in the message)
    ("variant-late-override", ["sweep", "v_late_override.yaml"], "variants.b: experiment: trainer.epochz"),
    ("variant-late-space", ["sweep", "v_late_space.yaml"],
     "variants.b: search_space.trainer.batch_size.type: a float dimension, but trainer.batch_size is declared int"),
    ("variant-late-selected", ["sweep", "v_late_override.yaml", "--variant", "a", "--variant", "b"], "trainer.epochz"),
    ("dim-float-for-int", ["sweep", "d_float_int.yaml"], "a float dimension, but trainer.batch_size is declared int "
     "(allowed: type: int, or categorical integers)"),
    ("dim-float-step-for-int", ["sweep", "d_float_int_step.yaml"], "trainer.epochs is declared int"),
    ("dim-float-component", ["sweep", "d_float_component.yaml"], "benchmark.num_tasks is declared int"),
    ("dim-float-for-bool", ["sweep", "d_float_bool.yaml"], "algorithm.anneal_offset_parity is declared bool"),
    ("dim-int-for-str", ["sweep", "d_int_str.yaml"], "an int dimension, but optimizer.name is declared str"),
    ("dim-float-choices-for-int", ["sweep", "d_choice_float.yaml"],
     "search_space.trainer.batch_size.choices: choice 32.0: 32.0 is a float, the key is declared int"),
    ("dim-str-choices-for-float", ["sweep", "d_choice_str.yaml"], "choice '1e-3': '1e-3' is a str"),
    ("group-algorithm", ["sweep", "g_algorithm.yaml"], "search_space.algorithm: names a config group, not one "
     "hyperparameter"),
    ("group-trainer", ["sweep", "g_trainer.yaml"], "a dotted leaf key, e.g. trainer.epochs"),
    ("resume-garbage", ["sweep", "ok.yaml", "--resume", "garbage"], "tuner.pkl is not a saved Tune state"),
    ("resume-truncated", ["sweep", "ok.yaml", "--resume", "truncated"], "tuner.pkl is damaged"),
    ("resume-latest-garbage", ["sweep", "ok.yaml", "--resume"], "h-20000101-000000): tuner.pkl is damaged"),
    ("resume-empty", ["sweep", "ok.yaml", "--resume", ""], "--resume '': is empty"),
    ("empty-uri-file", ["sweep", "e_uri.yaml"], "e_uri.yaml: storage.tracking_uri: is empty"),
    ("blank-uri-file", ["sweep", "e_uri_blank.yaml"], "storage.tracking_uri: is empty"),
    ("empty-tune-file", ["sweep", "e_tune.yaml"], "storage.tune_path: is empty"),
    ("empty-uri-flag", ["sweep", "ok.yaml", "--tracking-uri", ""], "--tracking-uri: is empty"),
    ("empty-storage-flag", ["sweep", "ok.yaml", "--storage", ""], "--storage '': is empty"),
    ("empty-address-flag", ["sweep", "ok.yaml", "--address", ""], "--address '': is empty"),
    ("empty-ui-uri", ["ui", "--tracking-uri", ""], "--tracking-uri: is empty"),
    ("empty-ui-host", ["ui", "--tracking-uri", "sqlite:///m.db", "--host", ""], "--host '': is empty"),
    ("variant-name-int", ["sweep", "n_int.yaml"], "variants: variant name 1 is not a non-empty string"),
    ("variant-name-null", ["sweep", "n_null.yaml"], "variant name None"),
    ("long-sweep", ["sweep", "u_long.yaml"], "storage.tracking_uri: 'sqlite:///xxx"),
    ("long-table", ["table", "ok_table.yaml", "--tracking-uri", LONG], "is too long for the file system"),
    ("long-ui", ["ui", "--tracking-uri", LONG], "is too long for the file system (at most 255 bytes per name)"),
    ("long-path-ui", ["ui", "--tracking-uri", "sqlite:///" + "/".join(["y" * 200] * 25) + ".db"],
     "the path is too long for the file system (at most 4096 bytes)"),
    ("loop-ui", ["ui", "--tracking-uri", "sqlite:///l.db"], "is a symbolic link loop"),
    ("loop-parent-ui", ["ui", "--tracking-uri", "sqlite:///l.db/x.db"], "is a symbolic link loop"),
    ("loop-sweep", ["sweep", "u_loop.yaml"], "is a symbolic link loop"),
    ("devnull-ui", ["ui", "--tracking-uri", "sqlite:////dev/null"], "is a character device, not a SQLite file"),
    ("devnull-sweep", ["sweep", "u_devnull.yaml"], "is a character device"),
    ("devnull-table", ["table", "ok_table.yaml", "--tracking-uri", "sqlite:////dev/null"], "is a character device"),
    ("unrelated-ui", ["ui", "--tracking-uri", "sqlite:///m.db"], "is a SQLite database but not an MLflow store "
     "(its tables: t)"),
    ("unrelated-table", ["table", "ok_table.yaml", "--tracking-uri", "sqlite:///m.db"], "not an MLflow store"),
    ("unrelated-sweep", ["sweep", "u_unrelated.yaml"], "u_unrelated.yaml: storage.tracking_uri: "),
    ("unrelated-sweep-flag", ["sweep", "ok.yaml", "--tracking-uri", "sqlite:///m.db"], "not an MLflow store"),
    ("postgres-ui", ["ui", "--tracking-uri", POSTGRES], "needs the database driver 'psycopg' (module psycopg)"),
    ("postgres-sweep", ["sweep", "u_postgres.yaml"], "pip install 'psycopg[binary]'"),
    ("mysql-ui", ["ui", "--tracking-uri", "mysql://u@127.0.0.1:1/db"], "pip install 'mysqlclient'"),
    ("mssql-table", ["table", "ok_table.yaml", "--tracking-uri", "mssql://u@127.0.0.1:1/db"], "pip install 'pyodbc'"),
    ("unknown-driver-ui", ["ui", "--tracking-uri", "postgresql+nodriver://h/db"], "not a database URL SQLAlchemy"),
]


@pytest.fixture
def workdir(tmp_path):
    """A fresh working folder with every input; returns it."""
    for name, content in FILES.items():
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content) if isinstance(content, bytes) else p.write_text(content)
    for name, spec in SPECS.items():
        (tmp_path / name).write_text(yaml.safe_dump(spec))
    latest = tmp_path / "ray_results" / "h-20000101-000000"  # the latest sweep named h: a damaged state
    latest.mkdir(parents=True)
    (latest / "tuner.pkl").write_bytes(b"\x80\x04garbage")
    con = sqlite3.connect(tmp_path / "m.db")  # a user's database that is no MLflow store
    con.execute("create table t (x)")
    con.execute("insert into t values (1)")
    con.commit()
    con.close()
    os.symlink("l.db", tmp_path / "l.db")
    return tmp_path


def snapshot(folder: Path) -> dict[str, tuple]:
    return {str(p.relative_to(folder)): (p.is_symlink() or p.is_dir(), p.lstat().st_size, p.lstat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


def check(rc: int, text: str, expected: str) -> None:
    lines = text.strip().splitlines()
    assert rc == 2, f"exit {rc}: {text[-2000:]}"
    assert "Traceback" not in text, text[-2000:]
    assert 1 <= len(lines) <= 4, text[-2000:]
    assert expected in text, text


def _started(what: str):
    def fail(*a, **k):
        raise AssertionError(f"{what} started")  # the check must come first (an unexpected error: exit 1)

    return fail


def run(argv: list[str], workdir: Path, monkeypatch, capsys) -> tuple[int, str]:
    """`clrepro ARGV` in-process in `workdir`, where neither Ray nor the MLflow UI may start."""
    import subprocess

    from clrepro.sweep import runner

    monkeypatch.setattr(runner, "_init_ray", _started("Ray"))
    monkeypatch.setattr(subprocess, "call", _started("the MLflow UI"))
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("CLREPRO_CONFIG_DIR", str(ROOT / "configs"))
    for var in ("RAY_ADDRESS", "RAY_AUTH_MODE", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse
        rc = e.code
    captured = capsys.readouterr()
    return rc, captured.out + captured.err


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_hostile_sweep_table_ui_input(case, workdir, monkeypatch, capsys):
    _, argv, expected = case
    before, db = snapshot(workdir), (workdir / "m.db").read_bytes()
    rc, text = run(argv, workdir, monkeypatch, capsys)
    check(rc, text, expected)
    assert "secret" not in text  # a database password is never printed
    assert snapshot(workdir) == before, "the working folder changed"
    assert (workdir / "m.db").read_bytes() == db, "the unrelated SQLite file was modified"


def test_a_database_server_that_does_not_answer_is_one_line(workdir, monkeypatch, capsys):
    """With the driver importable (a stand-in module), the server is asked next: nothing listens on port 1."""
    monkeypatch.setitem(sys.modules, "psycopg", types.ModuleType("psycopg"))
    before = snapshot(workdir)
    rc, text = run(["ui", "--tracking-uri", POSTGRES], workdir, monkeypatch, capsys)
    check(rc, text, "no postgresql server answers at 127.0.0.1:1")
    assert "secret" not in text and "u:***@" in text
    assert snapshot(workdir) == before


def test_an_mlflow_store_an_empty_database_and_a_new_file_pass(tmp_path):
    """What the store check lets through: a file MLflow made (its tables), an empty SQLite file, a new name."""
    from clrepro.tracking.uri import checked_tracking_uri

    store = tmp_path / "store.db"
    con = sqlite3.connect(store)
    for table in ("experiments", "alembic_version", "runs"):
        con.execute(f"create table {table} (x)")
    con.close()
    sqlite3.connect(tmp_path / "blank.db").close()  # no tables yet (a zero-byte file)
    for name in ("store.db", "blank.db", "new.db"):
        assert checked_tracking_uri(f"sqlite:///{tmp_path / name}") == f"sqlite:///{tmp_path / name}"
    assert not (tmp_path / "new.db").exists()


def test_a_symlink_to_a_store_passes(tmp_path, monkeypatch):
    """A link to a regular SQLite file is that file (a relative URI resolves to the target)."""
    from clrepro.tracking.uri import checked_tracking_uri

    sqlite3.connect(tmp_path / "real.db").execute("create table experiments (x)").connection.close()
    sqlite3.connect(tmp_path / "real.db").execute("create table alembic_version (x)").connection.close()
    os.symlink("real.db", tmp_path / "link.db")
    monkeypatch.chdir(tmp_path)
    assert checked_tracking_uri("sqlite:///link.db") == f"sqlite:///{(tmp_path / 'real.db').resolve()}"


def test_every_variant_is_planned_before_any_runs(workdir, monkeypatch, capsys):
    """The sweep command plans all variants first: run_sweep is never reached when the last one is broken."""
    from clrepro.sweep import runner

    def never(*a, **k):
        raise AssertionError("a sweep started")

    monkeypatch.setattr(runner, "run_sweep", never)
    rc, text = run(["sweep", "v_late_space.yaml"], workdir, monkeypatch, capsys)
    check(rc, text, "variants.b: search_space.trainer.batch_size.type")
