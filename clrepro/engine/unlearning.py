"""The unlearning protocol's plan: requests validated against the tasks seen and the unlearnable age."""

from __future__ import annotations

from dataclasses import dataclass

from clrepro.errors import ConfigError
from clrepro.limits import INT64_MAX, INT64_MIN


def _int(v, key: str) -> int:
    """An integer from an int, an integral float or their text; ConfigError otherwise (huge ones included)."""
    try:
        if isinstance(v, bool):
            raise ValueError
        if isinstance(v, int):
            n = v
        else:
            f = float(v)
            if not f.is_integer():
                raise ValueError
            n = int(f)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(key, f"expected a task id (an integer), got {str(v)[:40]!r}") from None
    if not INT64_MIN <= n <= INT64_MAX:
        raise ConfigError(key, f"{str(n)[:40]}... does not fit in a 64-bit integer")
    return n


@dataclass
class UnlearningPlan:
    """Requests {N: [ids]} and per-task ages for T tasks; `unlearnable(N, unlearned)` as docs/unlearning.md"""

    num_tasks: int
    requests: dict[int, list[int]]
    ages: dict[int, int]

    @classmethod
    def from_config(cls, ucfg, num_tasks: int) -> "UnlearningPlan":
        """Validate `unlearning.requests` / `unlearning.unlearnable_age`; one ConfigError naming the bad entry."""
        ages = _ages(ucfg.unlearnable_age, num_tasks)
        requests: dict[int, list[int]] = {}
        raw = ucfg.requests or {}
        if not isinstance(raw, dict):
            raise ConfigError("unlearning.requests", f"expected a mapping {{N: [task ids]}}, got {raw!r}")
        for k, ids in raw.items():
            n = _int(k, f"unlearning.requests.{k}")
            key = f"unlearning.requests.{n}"
            if not 1 <= n <= num_tasks:
                raise ConfigError(key, f"task {n} is not in the benchmark", f"1..{num_tasks}")
            ids = ids if isinstance(ids, (list, tuple)) else [ids]
            requests[n] = [_int(i, key) for i in ids]
        plan = cls(num_tasks, dict(sorted(requests.items())), ages)
        plan._check()
        return plan

    @property
    def active(self) -> bool:
        return bool(self.requests)

    def unlearnable(self, n: int, unlearned: set[int] | list[int]) -> list[int]:
        """Tasks τ ≤ N with N − τ < age_τ that have not been unlearned (N itself included)."""
        return [t for t in range(1, n + 1) if n - t < self.ages[t] and t not in unlearned]

    def _check(self) -> None:
        unlearned: set[int] = set()
        for n, ids in self.requests.items():
            allowed = self.unlearnable(n, unlearned)
            for u in ids:
                if u not in allowed:
                    why = ("not trained yet" if u > n else "already unlearned" if u in unlearned
                           else f"no longer unlearnable (age {self.ages.get(u, '?')})" if 1 <= u <= n
                           else "not in the benchmark")
                    raise ConfigError(f"unlearning.requests.{n}", f"task {u} cannot be unlearned after task {n}: "
                                      f"{why}", allowed or ["(none)"])
            if len(set(ids)) != len(ids):
                raise ConfigError(f"unlearning.requests.{n}", f"repeated task id in {ids}")
            unlearned |= set(ids)

    @property
    def unlearned(self) -> list[int]:
        """Every task named in a request (U), in order."""
        return sorted({u for ids in self.requests.values() for u in ids})

    def retrain_tasks(self) -> list[int]:
        """The retrain reference's tasks: 1..T minus U, original ids and order."""
        return [t for t in range(1, self.num_tasks + 1) if t not in set(self.unlearned)]


def _ages(age, num_tasks: int) -> dict[int, int]:
    if isinstance(age, dict):
        out = {}
        for k, v in age.items():
            t = _int(k, f"unlearning.unlearnable_age.{k}")
            out[t] = _int(v, f"unlearning.unlearnable_age.{k}")
        missing = [t for t in range(1, num_tasks + 1) if t not in out]
        if missing:
            raise ConfigError("unlearning.unlearnable_age", f"no age for tasks {missing}", [f"1..{num_tasks}"])
        return out
    a = _int(age, "unlearning.unlearnable_age")
    if a < 1:
        raise ConfigError("unlearning.unlearnable_age", f"{a} is out of range", "[1, inf)")
    return {t: a for t in range(1, num_tasks + 1)}
