"""CL metrics over the accuracy matrix: AA, BWT, FWT, FR and FR^I (docs/metrics/index.md).

Convention: `acc` is a (T, T) float array with acc[N-1, t-1] = a_{t,N}, the accuracy on task t after
training task N, as a fraction in [0, 1]; entries above the diagonal (t > N) are NaN. Pure numpy, no I/O.
"""

from __future__ import annotations

import math

import numpy as np

from clrepro.errors import ConfigError, UserError

FR_VARIANTS = ("joint", "independent")


def _square(acc, name: str = "acc", size: int | None = None) -> np.ndarray:
    a = np.asarray(acc, dtype=float)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
        raise UserError(f"{name}: expected a non-empty square (T, T) accuracy matrix, got shape {a.shape}")
    if size is not None and a.shape[0] != size:
        raise UserError(f"{name}: has {a.shape[0]} tasks, the main run has {size}")
    return a


def _row_mean(values: np.ndarray) -> float:
    """Mean over the non-NaN entries; NaN (without a warning) when there are none."""
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else math.nan


def _random_at(random: np.ndarray, n: int) -> np.ndarray:
    """a^R_{t,N} for t = 1..N: row N, else the diagonal a^R_{t,t}, else any row M >= t.

    The Random model never changes, so a^R_{t,N} = a^R_{t,t} for every N >= t (docs/metrics/index.md).
    """
    out = random[n - 1, :n].copy()
    for t in np.flatnonzero(np.isnan(out)):
        column = random[t:, t]
        known = column[~np.isnan(column)]
        out[t] = random[t, t] if not np.isnan(random[t, t]) else (known[0] if known.size else math.nan)
    return out


def _normalised_ratio(acc_vals, ref_vals, rand_vals) -> float:
    """mean_t (a_t - r_t) / (ref_t - r_t) - 1; inf/NaN (no warning) where ref_t = r_t."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.mean((acc_vals - rand_vals) / (ref_vals - rand_vals)) - 1.0)


def average_accuracy_series(acc) -> np.ndarray:
    """AA_N = (1/|S_N|) sum_{t in S_N} a_{t,N} for N = 1..T, the mean over the non-NaN entries of row N."""
    a = _square(acc)
    return np.array([_row_mean(row) for row in a])


def bwt_series(acc) -> np.ndarray:
    """BWT_N = 1/(N-1) sum_{t=1}^{N-1} (a_{t,N} - a_{t,t}) for N = 2..T (length T-1; rows from N=2, docs/metrics/index.md)."""
    a = _square(acc)
    diag = np.diag(a)
    return np.array([np.mean(a[n - 1, : n - 1] - diag[: n - 1]) for n in range(2, a.shape[0] + 1)])


def fwt_series(acc, independent) -> np.ndarray:
    """FWT_N = 1/(N-1) sum_{t=2}^{N} (a_{t,t} - a^I_{t,t}) for N = 2..T; a^I = the independent run's diagonal."""
    a = _square(acc)
    gain = np.diag(a) - np.diag(_square(independent, "independent", a.shape[0]))
    return np.array([np.mean(gain[1:n]) for n in range(2, a.shape[0] + 1)])


def forgetting_ratio(acc, joint_row, random) -> float:
    """FR_T = (1/T) sum_{t=1}^{T} (a_{t,T} - a^R_{t,T}) / (a^J_t - a^R_{t,T}) - 1 (HAT's forgetting ratio, docs/metrics/index.md).

    a^J_t is the joint row; a^R_{t,T} is the random matrix's last row, falling back to its diagonal where NaN.
    The denominator is the count of tasks. inf/NaN where a^J_t = a^R_{t,T}.
    """
    a = _square(acc)
    n = a.shape[0]
    joint = np.asarray(joint_row, dtype=float).ravel()
    if joint.shape != (n,):
        raise UserError(f"joint: has {joint.size} tasks, the main run has {n}")
    return _normalised_ratio(a[n - 1], joint, _random_at(_square(random, "random", n), n))


def forgetting_ratio_independent_series(acc, independent, random) -> np.ndarray:
    """FR^I_N = min(0, (1/N) sum_{t=1}^{N} (a_{t,N} - a^R_{t,N}) / (a^I_{t,t} - a^R_{t,N}) - 1) for N = 1..T.

    A zero denominator (a^I_{t,t} = a^R_{t,N}) gives NaN, not a clamped 0.
    """
    a = _square(acc)
    n_tasks = a.shape[0]
    ind = np.diag(_square(independent, "independent", n_tasks))
    rnd = _square(random, "random", n_tasks)
    raw = np.array([_normalised_ratio(a[n - 1, :n], ind[:n], _random_at(rnd, n)) for n in range(1, n_tasks + 1)])
    raw[~np.isfinite(raw)] = np.nan
    return np.minimum(0.0, raw)


def _clean(x):
    """A Python float, or None for NaN/inf."""
    x = float(x)
    return x if math.isfinite(x) else None


def _last(series: np.ndarray):
    return _clean(series[-1]) if len(series) else None


def compute_cl_metrics(acc, independent=None, joint=None, random=None, fr_variant: str = "joint") -> dict:
    """AA_T, BWT_T, FWT_T and FR (joint FR_T, or FR^I_T with fr_variant="independent") plus their series.

    A value is None where it is undefined (BWT/FWT at T=1, a zero denominator) or its reference is missing.
    Everything returned is JSON-serialisable.
    """
    if fr_variant not in FR_VARIANTS:
        raise ConfigError("fr_variant", f"unknown value {fr_variant!r}", FR_VARIANTS)
    a = _square(acc)
    series = {"AA": average_accuracy_series(a), "BWT": bwt_series(a)}
    series["FWT"] = fwt_series(a, independent) if independent is not None else None
    if independent is not None and random is not None:
        series["FR_I"] = forgetting_ratio_independent_series(a, independent, random)
    if fr_variant == "joint":
        fr = _clean(forgetting_ratio(a, joint, random)) if joint is not None and random is not None else None
    else:
        fr = _last(series["FR_I"]) if "FR_I" in series else None
    return {
        "AA": _last(series["AA"]),
        "BWT": _last(series["BWT"]),
        "FWT": _last(series["FWT"]) if series["FWT"] is not None else None,
        "FR": fr,
        "fr_variant": fr_variant,
        "series": {k: [_clean(v) for v in s] for k, s in series.items() if s is not None},
    }
