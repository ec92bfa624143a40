"""Read and write the reference implementation's acc.csv schema (metrics.md §4.2).

Main run: `after_training_task, average_accuracy, test_on_task_1..T`, one row per evaluated N, empty cells
for tasks not yet seen. Joint run: one row, `average_accuracy, test_on_task_1..T`. Errors are UserError.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from clrepro.errors import UserError

ROW_COL, AVG_COL = "after_training_task", "average_accuracy"
_TASK_COL = re.compile(r"^test_on_task_(\d+)$")


def _task_col(t: int) -> str:
    return f"test_on_task_{t}"


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
    frame = pd.DataFrame(a[[n - 1 for n in ids]], columns=[_task_col(t) for t in range(1, n_tasks + 1)])
    frame.insert(0, value_name, [_row_mean(a[n - 1]) for n in ids])
    frame.insert(0, ROW_COL, ids)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)


def write_joint_csv(path, row) -> None:
    """Write the joint reference's single row: average_accuracy, test_on_task_1..T."""
    r = np.asarray(row, dtype=float).ravel()
    frame = pd.DataFrame([r], columns=[_task_col(t) for t in range(1, r.size + 1)])
    frame.insert(0, AVG_COL, [_row_mean(r)])
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)


def _read(path) -> tuple[pd.DataFrame, dict[int, str]]:
    """The file as strings (empty cells NaN) and its task columns {t: name}; UserError on any problem."""
    if not Path(path).is_file():
        raise UserError(f"{path}: file not found")
    try:
        frame = pd.read_csv(path, dtype=str, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: not a readable CSV ({first})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    tasks = {int(m.group(1)): c for c in frame.columns if (m := _TASK_COL.match(c))}
    if not tasks or min(tasks) < 1:
        raise UserError(f"{path}: missing columns test_on_task_1..T (expected {ROW_COL}, {AVG_COL}, "
                        f"test_on_task_1, ..., test_on_task_T; found {', '.join(frame.columns) or 'none'})")
    return frame, tasks


def _numeric(path, frame: pd.DataFrame, column: str) -> np.ndarray:
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = values.isna() & frame[column].notna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise UserError(f"{path}: non-numeric value {frame[column].iloc[i]!r} in column {column}, data row {i + 1}")
    return values.to_numpy(dtype=float)


def _task_values(path, frame: pd.DataFrame, tasks: dict[int, str]) -> dict[int, np.ndarray]:
    out = {t: _numeric(path, frame, c) for t, c in tasks.items()}
    for t, v in out.items():
        if np.any((v < 0) | (v > 1)):
            raise UserError(f"{path}: column {tasks[t]} has a value outside [0, 1] (accuracies are fractions, "
                            "not percentages)")
    return out


def read_acc_matrix(path) -> np.ndarray:
    """The (T, T) matrix acc[N-1, t-1] = a_{t,N}, rows placed by after_training_task; NaN where absent."""
    frame, tasks = _read(path)
    if ROW_COL not in frame.columns:
        raise UserError(f"{path}: missing column {ROW_COL} (expected {ROW_COL}, {AVG_COL}, "
                        "test_on_task_1, ..., test_on_task_T)")
    rows = _numeric(path, frame, ROW_COL)
    if np.isnan(rows).any() or np.any(rows != np.round(rows)) or np.any(rows < 1):
        raise UserError(f"{path}: column {ROW_COL} must hold task numbers 1, 2, ... in every row")
    rows = rows.astype(int)
    if len(set(rows)) != len(rows):
        raise UserError(f"{path}: column {ROW_COL} repeats a task number")
    values = _task_values(path, frame, tasks)
    n_tasks = max(max(tasks), int(rows.max(initial=0)))
    acc = np.full((n_tasks, n_tasks), np.nan)
    for t, v in values.items():
        acc[rows - 1, t - 1] = v
    return acc


def read_joint_row(path) -> np.ndarray:
    """The joint reference's accuracies a^J_t for t = 1..T (NaN for a missing task column)."""
    frame, tasks = _read(path)
    if len(frame) != 1:
        raise UserError(f"{path}: a joint acc.csv must have exactly one data row, found {len(frame)}")
    values = _task_values(path, frame, tasks)
    row = np.full(max(tasks), np.nan)
    for t, v in values.items():
        row[t - 1] = v[0]
    return row
