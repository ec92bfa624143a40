"""Tracking URIs checked before anything starts: one line naming the key for a store MLflow could not use."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Callable

from clrepro.errors import ConfigError
from clrepro.files import path_problem

TRACKING_SCHEMES = "sqlite:///PATH, http(s)://HOST:PORT, postgresql://..., mysql://..., mssql://..., databricks"
MLFLOW_TABLES = ("experiments", "alembic_version")  # what every MLflow store has from its first migration
DATABASE_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
DRIVER_PACKAGES = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary", "MySQLdb": "mysqlclient",
                   "pymysql": "PyMySQL", "mysql.connector": "mysql-connector-python", "pyodbc": "pyodbc",
                   "pymssql": "pymssql", "pg8000": "pg8000", "asyncpg": "asyncpg", "mariadb": "mariadb"}
FILE_KINDS = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"),
              (stat.S_ISSOCK, "a socket"))


def absolute_tracking_uri(uri: str | None) -> str:
    """`sqlite:///rel.db` → `sqlite:////abs/rel.db`, so every Ray worker writes the same file."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    return uri


def _shown(uri: str) -> str:
    """The URI as an error shows it: at most 120 characters, a password masked."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(uri)
        if parts.password:
            uri = uri.replace(f":{parts.password}@", ":***@", 1)
    except ValueError:
        pass
    return repr(uri[:120] + ("..." if len(uri) > 120 else ""))


def checked_tracking_uri(uri: str | None, key: str = "--tracking-uri", source: str | None = None,
                         must_exist: bool = False, contents: bool = True) -> str:
    """The absolute tracking URI, or a ConfigError naming `key`: a scheme MLflow's stores accept; a SQLite file
    (a regular file, or a new one in an existing folder) that is empty or an MLflow store (with `contents`); a
    database whose driver is installed and whose server answers; a tracking server that answers. Nothing is
    created or modified."""
    from urllib.parse import urlparse

    if uri is not None and not uri.strip():
        raise ConfigError(key, "is empty", TRACKING_SCHEMES, source)
    raw = uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"

    def bad(problem: str, allowed: str | None = TRACKING_SCHEMES):
        return ConfigError(key, f"{_shown(raw)}: {problem}", allowed, source)

    if "\x00" in raw or any(c in raw for c in "\n\r"):
        raise bad("not a URI")
    if raw.startswith("sqlite:"):
        uri = _checked_sqlite(raw, bad, must_exist)
        if contents:
            check_store_contents(uri, key, source)
        return uri
    parsed = urlparse(raw)
    scheme = parsed.scheme.split("+")[0].lower()
    if scheme in ("http", "https"):
        if not parsed.hostname:
            raise bad("has no host")
        try:
            port = parsed.port or (443 if scheme == "https" else 80)
        except ValueError:
            raise bad("has an invalid port") from None
        _answers(parsed.hostname, port, bad, "tracking server", "a running `mlflow server`")
        return raw
    if scheme in DATABASE_PORTS:
        _check_database(raw, scheme, bad)
        return raw
    if scheme == "databricks":
        return raw
    if scheme in ("", "file"):
        raise bad("the file store (./mlruns) is refused by MLflow 3; use a SQLite file")
    raise bad(f"unsupported scheme '{parsed.scheme}'")


def _answers(host: str, port: int, bad: Callable, what: str, allowed: str) -> None:
    import socket

    try:
        socket.create_connection((host, port), timeout=3).close()
    except (OSError, UnicodeError) as e:
        raise bad(f"no {what} answers at {host}:{port} ({getattr(e, 'strerror', None) or e})", allowed) from None


def _checked_sqlite(raw: str, bad: Callable, must_exist: bool) -> str:
    """The absolute sqlite:/// URI of a regular SQLite file (or of a new one in a writable folder)."""
    if not raw.startswith("sqlite:///") or len(raw) <= len("sqlite:///"):
        raise bad("a SQLite URI is sqlite:///relative/path.db or sqlite:////absolute/path.db")
    name = raw[len("sqlite:///"):]
    problem = path_problem(name)
    if problem:
        raise bad(problem, None)
    try:
        st = os.stat(name)  # follows symbolic links: what SQLite would open
    except FileNotFoundError:
        st = None
    except OSError as e:
        why = {errno.ELOOP: "is a symbolic link loop (or one is on its path)",
               errno.ENOTDIR: "has a file where a folder of its path should be",
               errno.ENAMETOOLONG: "is too long for the file system"}.get(e.errno, f"cannot be read ({e.strerror or e})")
        raise bad(why, None) from None
    try:
        uri = absolute_tracking_uri(raw)
    except (OSError, RuntimeError) as e:  # Path.resolve: a symlink loop on a missing file's path
        raise bad(f"cannot be resolved ({e})", None) from None
    path = Path(uri[len("sqlite:///"):])
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise bad("is a folder, not a SQLite file")
        if not stat.S_ISREG(st.st_mode):
            kind = next((k for test, k in FILE_KINDS if test(st.st_mode)), "not a regular file")
            raise bad(f"is {kind}, not a SQLite file", "a regular SQLite file, or a new file name")
        try:
            with open(path, "rb") as f:
                head = f.read(16)
        except OSError as e:
            raise bad(f"cannot be read ({e.strerror or e})", None) from None
        if head and head != b"SQLite format 3\x00":
            raise bad("is not a SQLite database", None)
    elif must_exist:
        raise bad("does not exist (run a sweep or a table --run first)", None)
    elif not path.parent.is_dir():
        raise bad(f"folder {path.parent} does not exist", None)
    elif not os.access(path.parent, os.W_OK):
        raise bad(f"folder {path.parent} is not writable", None)
    return uri


def check_store_contents(uri: str, key: str = "--tracking-uri", source: str | None = None) -> None:
    """A non-empty SQLite file must already be an MLflow store: MLflow would add its tables to any other
    database. The file is opened read-only; a URI of another scheme passes."""
    import sqlite3
    from urllib.parse import quote

    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri[len("sqlite:///"):])
    try:
        if not path.is_file() or path.stat().st_size == 0:
            return
        con = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=10)
        try:
            tables = {r[0] for r in con.execute("select name from sqlite_master where type = 'table'")}
        finally:
            con.close()
    except (OSError, sqlite3.Error) as e:
        raise ConfigError(key, f"{_shown(uri)}: cannot be read as a SQLite database ({e})", None, source) from None
    if tables and not all(t in tables for t in MLFLOW_TABLES):
        shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise ConfigError(key, f"{_shown(uri)}: is a SQLite database but not an MLflow store (its tables: {shown}); "
                          "MLflow would write its own tables into it",
                          "an MLflow store (e.g. one a sweep made), or a new file name", source)


def _check_database(raw: str, scheme: str, bad: Callable) -> None:
    """A database URI: SQLAlchemy knows it, the driver it would load is installed, the server answers."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        url = make_url(raw)
        dialect = url.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError) as e:
        raise bad(f"not a database URL SQLAlchemy can use ({str(e).splitlines()[0][:120]})") from None
    try:
        dialect.import_dbapi()
    except ImportError as e:
        module = getattr(e, "name", None) or dialect.driver
        package = DRIVER_PACKAGES.get(module, DRIVER_PACKAGES.get(module.split(".")[0], module))
        raise bad(f"needs the database driver '{dialect.driver}' (module {module}), which cannot be imported here",
                  f"pip install '{package}', or name an installed driver: {scheme}+DRIVER://...") from None
    if url.host:
        try:
            port = url.port or DATABASE_PORTS[scheme]
        except ValueError:
            raise bad("has an invalid port") from None
        _answers(url.host, port, bad, f"{scheme} server", f"a running {scheme} server")
