"""Every user file is read here: a missing, unreadable, binary or malformed file is one UserError line that
names the user's file (never a temporary copy) and says what was expected."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

from clrepro.errors import UserError
from clrepro.limits import MAX_FILE_BYTES


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a single value ({str(value)[:40]!r})"


def read_bytes(path: str | Path, what: str = "file") -> bytes:
    """The file's bytes; UserError if it is missing, a folder, unreadable or larger than MAX_FILE_BYTES."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise UserError(f"{p}: {what} not found") from None
    except OSError as e:
        raise UserError(f"{p}: cannot read {what} ({e.strerror or e})") from None
    if p.is_dir():
        raise UserError(f"{p}: {what} is a folder, not a file")
    if not p.is_file():
        raise UserError(f"{p}: {what} is not a regular file")
    if st.st_size > MAX_FILE_BYTES:
        raise UserError(f"{p}: {what} is too large ({st.st_size} bytes; at most {MAX_FILE_BYTES})")
    try:
        return p.read_bytes()
    except OSError as e:
        raise UserError(f"{p}: cannot read {what} ({e.strerror or e})") from None


def read_text(path: str | Path, what: str = "file") -> str:
    """The file as UTF-8 text (a BOM is dropped); UserError for binary or non-UTF-8 content."""
    data = read_bytes(path, what)
    if b"\x00" in data:
        raise UserError(f"{path}: {what} is a binary file, not UTF-8 text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: {what} is not UTF-8 text (invalid byte at offset {e.start})") from None


def _yaml_loader():
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        """SafeLoader that refuses a key written twice in one mapping (PyYAML keeps the last silently)."""

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                except TypeError:
                    raise yaml.constructor.ConstructorError(None, None, f"unhashable key {key!r}",
                                                            key_node.start_mark) from None
                if duplicate:
                    raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is written twice",
                                                            key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def _expanded_size(data: Any, limit: int) -> int:
    """How many values `data` holds once its YAML aliases are expanded (as Hydra and JSON expand them), counted
    without expanding; stops counting past `limit`."""
    sizes: dict[int, int] = {}

    def size(v: Any) -> int:
        if not isinstance(v, (dict, list)):
            return 1
        if id(v) in sizes:
            return sizes[id(v)]
        sizes[id(v)] = limit + 1  # a container that holds itself expands forever
        items = list(v.items()) if isinstance(v, dict) else [(None, x) for x in v]
        n = 1
        for k, x in items:
            n += size(k) + size(x)
            if n > limit:
                break
        sizes[id(v)] = n
        return n

    return size(data)


def parse_yaml(text: str, source: str) -> Any:
    """YAML text → data; UserError naming `source`, with line and column, if it does not parse, or if its
    aliases expand it past MAX_YAML_VALUES (a "billion laughs" file)."""
    import yaml

    from clrepro.limits import MAX_YAML_VALUES

    try:
        data = yaml.load(text, Loader=_yaml_loader())  # noqa: S506 (a SafeLoader subclass)
        if "*" in text and _expanded_size(data, MAX_YAML_VALUES) > MAX_YAML_VALUES:
            raise UserError(f"{source}: its YAML aliases expand to more than {MAX_YAML_VALUES:,} values (at most "
                            f"{MAX_YAML_VALUES:,})")
        return data
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or (str(e).strip().splitlines() or ["syntax error"])[0]
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise UserError(f"{source}: not valid YAML ({where}{problem})") from None
    except RecursionError:
        raise UserError(f"{source}: not valid YAML (nested too deeply)") from None


def read_yaml(path: str | Path, what: str = "file", *, mapping: bool = True, empty_ok: bool = False) -> Any:
    """A YAML file's data: a mapping at the top level unless `mapping=False`; {} for an empty file if allowed."""
    data = parse_yaml(read_text(path, what), str(path))
    if data is None:
        if empty_ok:
            return {}
        raise UserError(f"{path}: {what} is empty (expected a mapping of keys, e.g. `name: value`)")
    if mapping and not isinstance(data, dict):
        raise UserError(f"{path}: {what} must be a mapping of keys at the top level, not {_kind(data)}")
    if mapping:
        bad = [k for k in data if not isinstance(k, str)]
        if bad:
            raise UserError(f"{path}: top-level key {bad[0]!r} is not a string")
    return data


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """A JSON file's data with finite numbers only (no NaN, Infinity, 1e400 or integers beyond 64 bits);
    UserError naming the file, with line and column, otherwise."""
    import json
    import math

    from clrepro.limits import INT64_MAX, INT64_MIN

    class Bad(ValueError):
        pass

    def number(text: str) -> float:
        v = float(text)
        if not math.isfinite(v):
            raise Bad(f"number {text[:40]} is not finite")
        return v

    def integer(text: str) -> int:
        if len(text) > 20 or not INT64_MIN <= int(text) <= INT64_MAX:
            raise Bad(f"integer {text[:40]}... does not fit in 64 bits")
        return int(text)

    def constant(text: str):
        raise Bad(f"{text} is not a finite number")

    try:
        return json.loads(read_text(path, what), parse_float=number, parse_int=integer, parse_constant=constant)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except Bad as e:
        raise UserError(f"{path}: {e} (a {what} holds finite numbers only)") from None
    except RecursionError:
        raise UserError(f"{path}: not valid JSON (nested too deeply)") from None


def read_csv(path: str | Path, what: str = "CSV file",
             short_rows: bool = False) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(header, [(line number, cells)]) of a CSV file; every data row must have the header's width, the
    header's names must be unique, and there must be at least one data row. Blank lines are skipped.

    `short_rows`: a row with fewer fields than the header is padded with empty cells (CLArena writes each
    row of its acc.csv only up to the last task trained); a row with more fields is still an error."""
    text = read_text(path, what)
    try:
        lines = [(n, row) for n, row in enumerate(csv.reader(io.StringIO(text), skipinitialspace=True, strict=True), start=1)
                 if any(c.strip() for c in row)]
    except csv.Error as e:
        raise UserError(f"{path}: not a readable CSV ({e})") from None
    if not lines:
        raise UserError(f"{path}: {what} is empty")
    header = [c.strip() for c in lines[0][1]]
    seen = set()
    for name in header:
        if name in seen:
            raise UserError(f"{path}: column {name or '(unnamed)'!s} appears twice in the header")
        seen.add(name)
    rows = []
    for n, row in lines[1:]:
        if short_rows and len(row) < len(header):
            row = row + [""] * (len(header) - len(row))
        if len(row) != len(header):
            raise UserError(f"{path}: line {n} has {len(row)} fields, the header has {len(header)}")
        rows.append((n, [c.strip() for c in row]))
    if not rows:
        raise UserError(f"{path}: {what} has a header but no data rows")
    return header, rows


def path_problem(name: str | Path) -> str | None:
    """Why a path cannot name a file here (too long for the file system, in all or in one name), or None."""
    from clrepro.limits import NAME_MAX, PATH_MAX

    absolute = os.path.abspath(name)
    if len(os.fsencode(absolute)) > PATH_MAX:
        return f"the path is too long for the file system (at most {PATH_MAX} bytes)"
    long = next((p for p in Path(absolute).parts if len(os.fsencode(p)) > NAME_MAX), None)
    if long is not None:
        return f"the name '{long[:40]}...' is too long for the file system (at most {NAME_MAX} bytes per name)"
    return None


def check_output_dir(path: str | Path, flag: str = "--out", must_be_new: bool = True) -> Path:
    """A folder to write into, checked without creating anything: not a file, not inside a file, each name
    short enough, the nearest existing parent writable; with `must_be_new`, absent or an empty folder."""
    from clrepro.limits import MAX_PATH_DEPTH

    text = str(path)
    p = Path(path)
    if not text or "\x00" in text:
        raise UserError(f"{flag} {path!r}: not a valid path")
    if problem := path_problem(text):
        raise UserError(f"{flag} {text[:60]}...: {problem}")
    if len(p.parts) > MAX_PATH_DEPTH:
        raise UserError(f"{flag} {text[:60]}...: {len(p.parts)} folders deep (at most {MAX_PATH_DEPTH})")
    try:
        exists = p.exists()
    except OSError as e:  # a symlink loop, a component that is a file...
        raise UserError(f"{flag} {p}: cannot use it ({e.strerror or e})") from None
    if not exists and p.is_symlink():
        raise UserError(f"{flag} {p}: is a symbolic link to nothing ({os.readlink(p)}); remove it or choose "
                        "another folder")
    if exists:
        if not p.is_dir():
            raise UserError(f"{flag} {p}: is an existing file, not a folder")
        if must_be_new and any(p.iterdir()):
            what = "a run (manifest.json)" if (p / "manifest.json").exists() else "files"
            raise UserError(f"{flag} {p}: folder already holds {what}; choose a new folder (nothing is "
                            "overwritten)")
        if not os.access(p, os.W_OK | os.X_OK):
            raise UserError(f"{flag} {p}: folder is not writable")
        return p
    parent = p.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{flag} {p}: {parent} is a file, so the folder cannot be created")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {p}: cannot create it ({parent} is not writable)")
    return p
