"""Read and write the reference implementation's acc.csv schema (docs/metrics/index.md#files).

Main run: `after_training_task, average_accuracy, test_on_task_1..T`, one row per evaluated N, empty cells
for tasks not yet seen. Joint run: one row, `average_accuracy, test_on_task_1..T`. Errors are UserError.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import numpy as np

from clrepro.errors import UserError
from clrepro.files import read_csv
from clrepro.limits import MAX_TASKS

ROW_COL, AVG_COL = "after_training_task", "average_accuracy"
_TASK_COL = re.compile(r"^test_on_task_([1-9][0-9]*)$", re.ASCII)  # 1, 2, ...: no 0, no 01, no other digits


def _task_col(t: int) -> str:
    return f"test_on_task_{t}"


def _text(v) -> str:
    """A cell as pandas' to_csv writes it: empty for None/NaN, repr for floats, str otherwise."""
    if v is None or (isinstance(v, (float, np.floating)) and math.isnan(v)):
        return ""
    return repr(float(v)) if isinstance(v, (float, np.floating)) else str(v)


def write_csv(path, header: list[str], rows) -> None:
    """A plain CSV (header, then rows; NaN -> empty cell), its folder created; no pandas import for a run."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows([_text(v) for v in row] for row in rows)


def _row_mean(row: np.ndarray) -> float:
    known = row[~np.isnan(row)]
    return float(known.mean()) if known.size else np.nan


def write_acc_csv(path, acc, task_ids=None, value_name: str = AVG_COL) -> None:
    """Write rows N of `acc` (acc[N-1, t-1] = a_{t,N}) for N in task_ids (default 1..T); NaN -> empty cell.

    `value_name` names the row-mean column (`average_classification_loss` for loss_cls.csv).
    """
    a = np.asarray(acc, dtype=float)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise UserError(f"{path}: expected a square (T, T) accuracy matrix, got shape {a.shape}")
    n_tasks = a.shape[0]
    ids = list(range(1, n_tasks + 1)) if task_ids is None else [int(n) for n in task_ids]
    if any(not 1 <= n <= n_tasks for n in ids):
        raise UserError(f"{path}: task_ids must lie in 1..{n_tasks}, got {ids}")
    header = [ROW_COL, value_name, *(_task_col(t) for t in range(1, n_tasks + 1))]
    write_csv(path, header, ([n, _row_mean(a[n - 1]), *a[n - 1]] for n in ids))


def write_joint_csv(path, row) -> None:
    """Write the joint reference's single row: average_accuracy, test_on_task_1..T."""
    r = np.asarray(row, dtype=float).ravel()
    write_csv(path, [AVG_COL, *(_task_col(t) for t in range(1, r.size + 1))], [[_row_mean(r), *r]])


def _read(path) -> tuple[list[str], list[tuple[int, list[str]]], dict[int, int]]:
    """(header, rows, {t: column index}) of an acc.csv; UserError on any problem. The task columns must be
    exactly test_on_task_1..T (T <= MAX_TASKS), each once."""
    header, rows = read_csv(path, "accuracy file", short_rows=True)  # CLArena's rows end at the last task seen
    tasks: dict[int, int] = {}
    for i, c in enumerate(header):
        m = _TASK_COL.match(c)
        if m:
            tasks[int(m.group(1))] = i
        elif c not in (ROW_COL, AVG_COL) and not (i == 0 and c in ("", "Unnamed: 0")):  # a pandas index column
            raise UserError(f"{path}: unexpected column {c!r} (expected {ROW_COL}, {AVG_COL}, test_on_task_1, ..., "
                            "test_on_task_T)")
    if not tasks:
        raise UserError(f"{path}: missing columns test_on_task_1..T (expected {ROW_COL}, {AVG_COL}, "
                        f"test_on_task_1, ..., test_on_task_T; found {', '.join(header) or 'none'})")
    T = max(tasks)
    if T > MAX_TASKS:
        raise UserError(f"{path}: column test_on_task_{T}: at most {MAX_TASKS} tasks are supported")
    missing = [t for t in range(1, T + 1) if t not in tasks]
    if missing:
        raise UserError(f"{path}: missing column test_on_task_{missing[0]} (task columns must be test_on_task_1.."
                        f"test_on_task_{T})")
    return header, rows, tasks


def _cell(path, line: int, column: str, text: str) -> float:
    """One cell: NaN if empty, else a finite number (UserError naming the line and column otherwise)."""
    if text == "":
        return np.nan
    try:
        v = float(text)
    except ValueError:
        raise UserError(f"{path}: non-numeric value {text[:40]!r} in column {column}, line {line}") from None
    if not np.isfinite(v):
        raise UserError(f"{path}: value {text!r} in column {column}, line {line} is not a finite number "
                        "(leave the cell empty for a task not tested)")
    return v


def _accuracy(path, line: int, column: str, text: str) -> float:
    v = _cell(path, line, column, text)
    if not np.isnan(v) and not 0.0 <= v <= 1.0:
        raise UserError(f"{path}: column {column}, line {line} has a value outside [0, 1] (accuracies are "
                        "fractions, not percentages)")
    return v


def read_acc_matrix(path) -> np.ndarray:
    """The (T, T) matrix acc[N-1, t-1] = a_{t,N}, rows placed by after_training_task (NaN for rows absent).

    A present row N must have a value for every task t <= N and none for t > N (a task not trained yet)."""
    header, rows, tasks = _read(path)
    if ROW_COL not in header:
        raise UserError(f"{path}: missing column {ROW_COL} (expected {ROW_COL}, {AVG_COL}, "
                        "test_on_task_1, ..., test_on_task_T)")
    T, ri = max(tasks), header.index(ROW_COL)
    acc = np.full((T, T), np.nan)
    seen: dict[int, int] = {}
    for line, cells in rows:
        text = cells[ri]
        n = int(text.split(".")[0]) if re.fullmatch(r"\d{1,6}(\.0*)?", text, re.ASCII) else 0
        if not 1 <= n <= T:
            raise UserError(f"{path}: line {line}: {ROW_COL} must be a task number in 1..{T} (the task columns), "
                            f"got {text[:40]!r}")
        if n in seen:
            raise UserError(f"{path}: column {ROW_COL} repeats a task number ({n}, lines {seen[n]} and {line})")
        seen[n] = line
        if AVG_COL in header:
            _accuracy(path, line, AVG_COL, cells[header.index(AVG_COL)])
        for t, ci in tasks.items():
            v = _accuracy(path, line, header[ci], cells[ci])
            if t <= n and np.isnan(v):
                raise UserError(f"{path}: line {line} ({ROW_COL} {n}) has no value for {header[ci]} (every task "
                                f"t <= {n} is tested after task {n})")
            if t > n and not np.isnan(v):
                raise UserError(f"{path}: line {line} ({ROW_COL} {n}) has a value for {header[ci]}, a task not "
                                "trained yet (leave it empty)")
            acc[n - 1, t - 1] = v
    return acc


def read_joint_row(path) -> np.ndarray:
    """The joint reference's accuracies a^J_t for t = 1..T: one data row, a value for every task."""
    header, rows, tasks = _read(path)
    if len(rows) != 1:
        raise UserError(f"{path}: a joint acc.csv must have exactly one data row, found {len(rows)}")
    line, cells = rows[0]
    if AVG_COL in header:
        _accuracy(path, line, AVG_COL, cells[header.index(AVG_COL)])
    row = np.full(max(tasks), np.nan)
    for t, ci in tasks.items():
        v = _accuracy(path, line, header[ci], cells[ci])
        if np.isnan(v):
            raise UserError(f"{path}: the joint row has no value for {header[ci]} (the joint model is tested on "
                            "every task)")
        row[t - 1] = v
    return row
