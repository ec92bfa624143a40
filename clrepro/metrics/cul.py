"""Continual-unlearning metrics DD, AG/AGR, AA_all/AA_remaining and their CSVs (docs/unlearning.md).

Pure torch/numpy, no engine imports. Tasks are 1-based IDs; E = the evaluated tasks 1..T, U = the tasks
unlearned by the end, R = E \\ U. Feature batches are (n, D) with rows the same samples in both models.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from clrepro.errors import ConfigError, UserError
from clrepro.metrics.cl import _row_mean, _square
from clrepro.metrics.io import write_csv

SCOPES = ("all", "remaining", "unlearned")
CKA_EPS = 1e-12  # the reference's guard in the CKA denominator (A:clarena/utils/metrics.py linear_cka)


def _pair(x, y) -> tuple[torch.Tensor, torch.Tensor]:
    """Two (n, D) floating tensors with the same number of rows (the same samples)."""
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if not x.is_floating_point():
        x = x.float()
    if not y.is_floating_point():
        y = y.float()
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise UserError(f"features: expected two (n, D) batches of the same n samples, got shapes "
                        f"{tuple(x.shape)} and {tuple(y.shape)}")
    return x, y


def linear_cka(x, y) -> torch.Tensor:
    """d = 1 - ||X~^T Y~||_F^2 / (||X~^T X~||_F * ||Y~^T Y~||_F + 1e-12), X~, Y~ centred over the samples.

    X and Y may have different widths. A one-sample batch centres to zero and gives d = 1 (as the reference).
    """
    x, y = _pair(x, y)
    xc, yc = x - x.mean(dim=0, keepdim=True), y - y.mean(dim=0, keepdim=True)
    cross = torch.linalg.matrix_norm(xc.T @ yc) ** 2
    return 1.0 - cross / (torch.linalg.matrix_norm(xc.T @ xc) * torch.linalg.matrix_norm(yc.T @ yc) + CKA_EPS)


def _per_sample(x, y, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _pair(x, y)
    if x.shape != y.shape:
        raise UserError(f"{name}: both feature batches must have the same shape, got {tuple(x.shape)} "
                        f"and {tuple(y.shape)}")
    return x, y


def euclidean(x, y) -> torch.Tensor:
    """d = (1/n) sum_i ||x_i - y_i||_2."""
    x, y = _per_sample(x, y, "euclidean")
    return torch.linalg.vector_norm(x - y, ord=2, dim=-1).mean()


def manhattan(x, y) -> torch.Tensor:
    """d = (1/n) sum_i ||x_i - y_i||_1."""
    x, y = _per_sample(x, y, "manhattan")
    return torch.linalg.vector_norm(x - y, ord=1, dim=-1).mean()


def cosine(x, y) -> torch.Tensor:
    """d = 1 - (1/n) sum_i cos(x_i, y_i) (docs/unlearning.md; torch's cosine_similarity, eps 1e-8)."""
    x, y = _per_sample(x, y, "cosine")
    return 1.0 - torch.nn.functional.cosine_similarity(x, y, dim=-1).mean()


DISTANCES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "linear_cka": linear_cka, "euclidean": euclidean, "manhattan": manhattan, "cosine": cosine}


def _check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError("batch_size", f"must be a positive integer, got {batch_size!r}")
    return batch_size


def distribution_distance(phi_main, phi_ref, batch_size: int, distance: str = "linear_cka") -> float:
    """DD_t = (1/B_t) sum_b d(Phi^main_b, Phi^ret_b) over consecutive test batches, weighted equally.

    The last batch is the shorter remainder. One host sync, at the end.
    """
    if distance not in DISTANCES:
        raise ConfigError("distance", f"unknown value {distance!r}", DISTANCES)
    batch_size = _check_batch_size(batch_size)
    x, y = _pair(phi_main, phi_ref)
    if x.shape[0] == 0:
        raise UserError("distribution_distance: the test set is empty")
    d = DISTANCES[distance]
    per_batch = torch.stack([d(xb, yb) for xb, yb in zip(x.split(batch_size), y.split(batch_size))])
    return float(per_batch.mean())


def accuracy_gain(correct_main, correct_orig, batch_size: int) -> float:
    """AG_t = (1/B_t) sum_b (acc_b(main) - acc_b(original)) from per-sample correctness vectors."""
    batch_size = _check_batch_size(batch_size)
    main = torch.as_tensor(correct_main).reshape(-1).to(torch.float64)
    orig = torch.as_tensor(correct_orig).reshape(-1).to(torch.float64)
    if main.shape != orig.shape or main.numel() == 0:
        raise UserError(f"accuracy_gain: expected two non-empty correctness vectors of the same length, got "
                        f"{main.numel()} and {orig.numel()}")
    n = main.numel()
    batch = torch.arange(n, device=main.device) // batch_size
    n_batches = (n + batch_size - 1) // batch_size
    sums = torch.zeros(n_batches, dtype=torch.float64, device=main.device).index_add_(0, batch, main - orig)
    counts = torch.bincount(batch, minlength=n_batches).to(torch.float64)
    return float((sums / counts).mean())


def scope_tasks(scope: str, evaluated: Iterable[int], unlearned: Iterable[int], fallback: bool = False) -> list[int]:
    """The sorted task IDs of an average scope: all = E, remaining = E \\ U, unlearned = E ∩ U.

    With fallback=True (DD) an empty scope falls back to all of E; without it (AG) it stays empty.
    """
    if scope not in SCOPES:
        raise ConfigError("scope", f"unknown value {scope!r}", SCOPES)
    e, u = {int(t) for t in evaluated}, {int(t) for t in unlearned}
    tasks = {"all": e, "remaining": e - u, "unlearned": e & u}[scope]
    return sorted(tasks if tasks or not fallback else e)


def _scope_mean(per_task: dict[int, float], tasks: list[int], name: str) -> float:
    """Unweighted mean of per_task over tasks; NaN when tasks is empty; UserError if one is missing."""
    missing = [t for t in tasks if t not in per_task]
    if missing:
        raise UserError(f"{name}: no value for task(s) {missing} in the average scope")
    return float(np.mean([per_task[t] for t in tasks])) if tasks else math.nan


def _per_task(values: dict, n_tasks: int, name: str) -> dict[int, float]:
    out = {int(t): float(v) for t, v in values.items()}
    if any(not 1 <= t <= n_tasks for t in out):
        raise UserError(f"{name}: task IDs must lie in 1..{n_tasks}, got {sorted(out)}")
    return dict(sorted(out.items()))


def cul_metrics(dd_per_task: dict[int, float], ag_per_task: dict[int, float] | None, acc_matrix,
                unlearned: Iterable[int], dd_scope: str = "unlearned", ag_scope: str = "remaining",
                distance: str = "linear_cka", batch_size: int | None = None) -> dict:
    """DD, AGR, AA_all and AA_remaining for the final state, plus what a run record must name.

    E = 1..T with T from `acc_matrix` (acc[N-1, t-1] = a_{t,N}); U = `unlearned` (intersected with E).
    DD = mean DD_t over the DD scope (empty -> all of E); AGR = mean AG_t over the AG scope (empty, or no
    original reference, -> NaN). AA_all = mean of row T over its evaluated tasks (unlearned ones included, as
    the reference); AA_remaining = mean of row T over R = E \\ U (NaN if R is empty).
    """
    if distance not in DISTANCES:
        raise ConfigError("distance", f"unknown value {distance!r}", DISTANCES)
    acc = _square(acc_matrix)
    n_tasks = acc.shape[0]
    evaluated = list(range(1, n_tasks + 1))
    u = sorted(set(evaluated) & {int(t) for t in unlearned})
    dd = _per_task(dd_per_task, n_tasks, "DD")
    dd_requested = scope_tasks(dd_scope, evaluated, u)
    dd_tasks = dd_requested or evaluated
    result = {
        "DD": _scope_mean(dd, dd_tasks, "DD"),
        "AGR": math.nan,
        "AA_all": _row_mean(acc[-1]),
        "AA_remaining": _row_mean(acc[-1, [t - 1 for t in scope_tasks("remaining", evaluated, u)]]),
        "dd_per_task": dd,
        "ag_per_task": None,
        "dd_scope": dd_scope,
        "dd_scope_used": dd_scope if dd_requested else "all",
        "dd_tasks": dd_tasks,
        "ag_scope": ag_scope,
        "ag_tasks": scope_tasks(ag_scope, evaluated, u),
        "unlearned": u,
        "distance": distance,
        "batch_size": batch_size,
    }
    if ag_per_task is not None:
        result["ag_per_task"] = _per_task(ag_per_task, n_tasks, "AG")
        result["AGR"] = _scope_mean(result["ag_per_task"], result["ag_tasks"], "AG")
    return result


_AVERAGE_ROW = re.compile(r"^average_(dd|ag)_(" + "|".join(SCOPES) + r")$")


def write_metric_csv(path, metric: str, per_task: dict[int, float], scope: str, average: float) -> None:
    """`task, <metric>` rows per task, then `average_<metric>_<scope>, <average>`; NaN -> empty cell."""
    if metric not in ("dd", "ag"):
        raise UserError(f"{path}: metric must be dd or ag, got {metric!r}")
    if scope not in SCOPES:
        raise ConfigError("scope", f"unknown value {scope!r}", SCOPES)
    rows = [(str(t), per_task[t]) for t in sorted(per_task)] + [(f"average_{metric}_{scope}", average)]
    write_csv(path, ["task", metric], rows)


def write_cul_csv(folder, result: dict) -> None:
    """dd.csv (mean named with the scope actually used) and, with an original reference, ag.csv in `folder`."""
    folder = Path(folder)
    write_metric_csv(folder / "dd.csv", "dd", result["dd_per_task"], result["dd_scope_used"], result["DD"])
    if result["ag_per_task"] is not None:
        write_metric_csv(folder / "ag.csv", "ag", result["ag_per_task"], result["ag_scope"], result["AGR"])


def read_metric_csv(path) -> tuple[str, dict[int, float], str, float]:
    """(metric, {task: value}, scope, average) from a dd.csv/ag.csv; UserError on any problem."""
    import pandas as pd  # only readers of dd.csv/ag.csv pay for it

    if not Path(path).is_file():
        raise UserError(f"{path}: file not found")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError):
        raise UserError(f"{path}: not a readable CSV") from None
    if list(frame.columns) not in (["task", "dd"], ["task", "ag"]):
        raise UserError(f"{path}: expected columns task, dd or task, ag; found {', '.join(frame.columns) or 'none'}")
    metric = frame.columns[1]
    per_task, average = {}, None
    for label, cell in zip(frame["task"].str.strip(), frame[metric].str.strip()):
        try:
            value = float(cell) if cell else math.nan
        except ValueError:
            raise UserError(f"{path}: non-numeric value {cell!r} for {label}") from None
        m = _AVERAGE_ROW.match(label)
        if m and m.group(1) == metric and average is None:
            scope, average = m.group(2), value
        elif label.isdigit() and int(label) >= 1 and int(label) not in per_task and average is None:
            per_task[int(label)] = value
        else:
            raise UserError(f"{path}: unexpected row {label!r} (expected task IDs 1, 2, ... then one "
                            f"average_{metric}_<{'|'.join(SCOPES)}> row)")
    if average is None:
        raise UserError(f"{path}: missing the final average_{metric}_<scope> row")
    return metric, per_task, scope, average
