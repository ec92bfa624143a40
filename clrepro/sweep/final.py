"""The 'final' group: the best configurations re-run on the report seeds, as Tune trials on warm actors.

The searcher wrapper queues one placeholder trial per (rank, report seed) as soon as every search trial
has been suggested, so Tune keeps its reused actors (a fresh worker pays about 5 s of imports here) and
the final trials start while the last search trials finish. The driver-side callback publishes the
ranking on the sweep's parent MLflow run once every search trial has ended, creating the final runs
once; each final trial waits for that ranking, then runs its seed. The wrapper hands Optuna only the
search trials, a failed one as FAIL and a scheduler-stopped one as PRUNED (never a partial value).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import tempfile
import time
from dataclasses import dataclass
from typing import Iterable

from ray.tune import Callback
from ray.tune.search import Searcher

FINAL_KEY = "_final"  # config key of a final-group trial: {"rank", "seed"}
RANKING_TAG = "clrepro.final_ranking"  # on the parent run: JSON [{rank, source, params, objective, run_id}]


class FinalGroupSearcher(Searcher):
    """Suggest `n_search` configurations from `inner`, then a placeholder per (rank ≤ top_k, report seed)."""

    def __init__(self, inner: Searcher, n_search: int, report_seeds: list[int], top_k: int, mode: str) -> None:
        super().__init__(metric="objective", mode=mode)
        self.inner, self.n_search, self.report_seeds, self.top_k = inner, n_search, list(report_seeds), top_k
        self.suggested = 0
        self.search_ids: set[str] = set()
        self.queue: list[dict] | None = None

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return self.inner.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str):
        if self.suggested < self.n_search:
            cfg = self.inner.suggest(trial_id)
            if cfg is None:
                return None
            if cfg != Searcher.FINISHED:
                self.suggested += 1
                self.search_ids.add(trial_id)
                return cfg
            self.n_search = self.suggested  # the inner search ended early (a finished grid)
        if self.queue is None:
            self.queue = [{FINAL_KEY: {"rank": r, "seed": s}}
                          for r in range(1, self.top_k + 1) for s in self.report_seeds]
        return self.queue.pop(0) if self.queue else Searcher.FINISHED

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.search_ids and not result.get("failed") and _finite(result.get("objective")):
            self.inner.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self.search_ids:
            return
        failed = bool(error) or bool((result or {}).get("failed"))  # a Tune error, or the trial's own
        if not failed and result and not result.get("partial", True) and _finite(result.get("objective")):
            self.inner.on_trial_complete(trial_id, result=result, error=False)
        else:  # failed → FAIL, stopped early by the scheduler → PRUNED
            self.inner.on_trial_complete(trial_id, result=None, error=failed)

    def save(self, checkpoint_path: str) -> None:
        with tempfile.TemporaryDirectory() as d:
            inner_path = os.path.join(d, "inner.pkl")
            self.inner.save(inner_path)
            with open(inner_path, "rb") as f:
                inner_bytes = f.read()
        state = {k: v for k, v in self.__dict__.items() if k != "inner"}
        with open(checkpoint_path, "wb") as f:
            pickle.dump({"state": state, "inner": inner_bytes}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            saved = pickle.load(f)
        self.__dict__.update(saved["state"])
        with tempfile.TemporaryDirectory() as d:
            inner_path = os.path.join(d, "inner.pkl")
            with open(inner_path, "wb") as f:
                f.write(saved["inner"])
            self.inner.restore(inner_path)


def _finite(v) -> bool:
    return v is not None and math.isfinite(float(v))


@dataclass(frozen=True)
class Candidate:
    """A finished search trial as the ranking sees it: its id, its configuration and its objective."""

    trial_id: str
    params: dict
    objective: float | None


def rank_best(candidates: Iterable[Candidate], mode: str, k: int) -> list[Candidate]:
    """The k best candidates with a finite objective, best first (`mode` max or min); ties keep their order.

    The one ranking of a sweep: the final group's runs (PublishRanking) and the sweep's reported best
    configuration (the driver) both come from it."""
    done = [c for c in candidates if _finite(c.objective)]
    return sorted(done, key=lambda c: c.objective, reverse=(mode == "max"))[:k]


class PublishRanking(Callback):
    """Driver side: once every search trial has ended, rank them and create the final runs (once)."""

    def __init__(self, ctx, top_k: int, mode: str) -> None:
        self.ctx, self.top_k, self.mode = ctx, top_k, mode
        self.published = False

    def __getstate__(self):
        return {**self.__dict__, "published": False}

    def on_step_begin(self, iteration, trials, **info):
        if self.published or self.top_k == 0:
            return
        search = [t for t in trials if FINAL_KEY not in t.config]
        if not search or not any(FINAL_KEY in t.config for t in trials):
            return  # the search is still being suggested
        if any(t.status not in ("TERMINATED", "ERROR") for t in search):
            return
        self.publish(search)

    def publish(self, search) -> None:
        from clrepro.sweep.trial import final_run
        from clrepro.tracking.mlflow_store import MlflowStore

        store = MlflowStore(self.ctx.tracking_uri, self.ctx.experiment_id)
        done = [Candidate(t.trial_id, dict(t.config), (t.last_result or {}).get("objective")) for t in search
                if t.status == "TERMINATED" and not (t.last_result or {}).get("partial", True)]
        ranking = []
        for rank, c in enumerate(rank_best(done, self.mode, self.top_k), start=1):
            ranking.append({"rank": rank, "source": c.trial_id, "params": c.params, "objective": c.objective,
                            "run_id": final_run(store, self.ctx, rank, c.trial_id, c.params)})
        store.set_tags(self.ctx.parent_run_id, {RANKING_TAG: json.dumps(ranking)})
        self.published = True


def wait_for_ranking(ctx, rank: int, poll: float = 0.5) -> dict | None:
    """Final trial side: block until the ranking is published; the entry of `rank` (None: no such rank)."""
    from clrepro.tracking.mlflow_store import MlflowStore

    store = MlflowStore(ctx.tracking_uri, ctx.experiment_id)
    while True:
        tags = store.run_tags(ctx.parent_run_id)
        if RANKING_TAG in tags:
            ranking = json.loads(tags[RANKING_TAG])
            return next((e for e in ranking if e["rank"] == rank), None)
        time.sleep(poll)
