"""Two-sample statistics for parity rows: Welch's t-test and the TOST equivalence test with its power."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def welch(a, b) -> tuple[float, float, float]:
    """(difference of means b − a, its standard error, Welch–Satterthwaite degrees of freedom)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)) if se > 0 else float("inf")
    return float(b.mean() - a.mean()), se, df


def welch_p(a, b) -> float:
    """Two-sided p-value of Welch's t-test for equal means."""
    d, se, df = welch(a, b)
    if se == 0:
        return 1.0 if d == 0 else 0.0
    return float(2 * stats.t.sf(abs(d) / se, df))


def tost(a, b, margin: float, alpha: float = 0.05) -> dict:
    """Two one-sided Welch tests of |mean(b) − mean(a)| < margin; equivalent when p = max(p_lower, p_upper) < alpha.

    The power is that of this test at a true difference of 0 with the observed standard deviations and sizes
    (noncentral t); `n_for_80` is the seeds per side that would give 80 % power at the observed spread.
    """
    d, se, df = welch(a, b)
    if se == 0:
        p = 0.0 if abs(d) < margin else 1.0
        return {"diff": d, "se": 0.0, "p": p, "equivalent": p < alpha, "power": 1.0, "n_for_80": 2}
    p_lower = float(stats.t.sf((d + margin) / se, df))   # H0: diff <= -margin
    p_upper = float(stats.t.cdf((d - margin) / se, df))  # H0: diff >= +margin
    p = max(p_lower, p_upper)
    tcrit = stats.t.ppf(1 - alpha, df)
    nc = margin / se  # at a true difference of 0 both one-sided tests must reject: |T| < nc - tcrit
    power = max(0.0, float(stats.nct.cdf(nc - tcrit, df, 0.0) - stats.nct.cdf(-(nc - tcrit), df, 0.0)))
    sd2 = np.var(np.asarray(a, float), ddof=1) + np.var(np.asarray(b, float), ddof=1)
    z = stats.norm.ppf(1 - alpha) + stats.norm.ppf(0.9)  # 80 % power at diff 0 needs margin/se >= z_a + z_0.1
    n80 = max(2, math.ceil(z ** 2 * sd2 / margin ** 2))
    return {"diff": d, "se": se, "p": p, "equivalent": p < alpha, "power": power, "n_for_80": n80}


def paired_tost(d, margin: float, alpha: float = 0.05) -> dict:
    """TOST on paired differences d (one per seed, same start and batches in both tools): |mean d| < margin."""
    d = np.asarray(d, float)
    n, m = len(d), float(d.mean())
    se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else float("inf")
    if se == 0:
        p = 0.0 if abs(m) < margin else 1.0
    else:
        p = max(float(stats.t.sf((m + margin) / se, n - 1)), float(stats.t.cdf((m - margin) / se, n - 1)))
    return {"diff": m, "se": se, "p": p, "equivalent": p < alpha}
