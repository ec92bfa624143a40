"""Cells: mean ± sample std (ddof = 1) over seeds, n, published value, Δ, tolerance verdict, Welch's p."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clrepro.errors import UserError


@dataclass
class Published:
    mean: float
    std: float | None = None
    n: int | None = None


@dataclass
class Cell:
    """One row × column: the reproduced values (display scale) and the comparison with the paper."""

    values: list[float] = field(default_factory=list)
    published: Published | None = None
    tolerance_rule: str = "std"
    tolerance_value: float = 1.0

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.values)) if self.values else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation (ddof = 1); None for fewer than two seeds."""
        return float(np.std(self.values, ddof=1)) if len(self.values) > 1 else None

    @property
    def delta(self) -> float | None:
        if self.mean is None or self.published is None:
            return None
        return self.mean - self.published.mean

    @property
    def within(self) -> bool | None:
        """|Δ| within the table's tolerance (None when there is nothing to judge)."""
        d = self.delta
        if d is None or self.tolerance_rule == "none":
            return None
        if self.tolerance_rule == "points":
            return abs(d) <= self.tolerance_value
        if self.published.std is None:
            return None
        return abs(d) <= self.tolerance_value * self.published.std

    @property
    def p_value(self) -> float | None:
        """Welch's t-test of reproduced vs published (needs n ≥ 2 on both sides and a published std)."""
        p = self.published
        if p is None or p.std is None or not p.n:
            return None
        return welch_p(self.mean, self.std, self.n, p.mean, p.std, p.n)


def welch_p(m1: float, s1: float, n1: int, m2: float, s2: float, n2: int) -> float | None:
    """Welch's t-test p from two samples' mean, std and n (None: n < 2 on a side, no spread, or not finite)."""
    if n1 < 2 or n2 < 2 or (s1 == 0 and s2 == 0):
        return None
    from scipy.stats import ttest_ind_from_stats

    res = ttest_ind_from_stats(m1, s1, n1, m2, s2, n2, equal_var=False)
    return float(res.pvalue) if math.isfinite(res.pvalue) else None


def read_published(path: str | Path, scale: float = 1.0) -> dict[tuple, Published]:
    """{(approach, benchmark, metric): Published} from a CSV with approach, benchmark, metric, mean[, std, n]."""
    from clrepro.files import read_csv

    header, rows = read_csv(path, "published CSV")
    need = {"approach", "benchmark", "metric", "mean"}
    if not need <= set(header):
        raise UserError(f"{path}: published CSV needs columns {sorted(need)} (+ optional std, n)")
    out = {}
    for i, cells in rows:
        r = dict(zip(header, cells))
        try:
            mean = float(r["mean"]) * scale
            std = float(r["std"]) * scale if r.get("std") not in (None, "") else None
            n = int(r["n"]) if r.get("n") not in (None, "") else None
        except ValueError:
            raise UserError(f"{path}: line {i}: mean/std/n must be numbers") from None
        if not math.isfinite(mean) or (std is not None and (not math.isfinite(std) or std < 0)) or \
                (n is not None and n < 1):
            raise UserError(f"{path}: line {i}: mean and std must be finite (std >= 0), n >= 1")
        key = (r["approach"], r["benchmark"], r["metric"])
        if key in out:
            raise UserError(f"{path}: line {i}: {key[0]} / {key[1]} / {key[2]} is listed twice")
        out[key] = Published(mean, std, n)
    return out
