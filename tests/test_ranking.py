"""One best-configuration ranking: the final group's (PublishRanking) and the sweep's reported best agree."""

from __future__ import annotations

import math
from types import SimpleNamespace

from clrepro.sweep.final import Candidate, PublishRanking, rank_best
from clrepro.sweep.runner import TrialSummary, _best


def test_rank_best_orders_filters_and_keeps_ties():
    cands = [Candidate("a", {"x": 1}, 0.5), Candidate("b", {"x": 2}, math.nan), Candidate("c", {"x": 3}, 0.9),
             Candidate("d", {"x": 4}, None), Candidate("e", {"x": 5}, 0.9), Candidate("f", {"x": 6}, 0.1)]
    assert [c.trial_id for c in rank_best(cands, "max", 3)] == ["c", "e", "a"]  # c before e: input order on a tie
    assert [c.trial_id for c in rank_best(cands, "min", 2)] == ["f", "a"]
    assert rank_best(cands, "max", 0) == []


def test_driver_and_final_group_rank_alike(monkeypatch):
    objectives = {"t1": 0.7, "t2": 0.8, "t3": float("nan"), "t4": 0.8, "t5": 0.2}
    summaries = [TrialSummary(k, "DONE", {"lr": i}, v) for i, (k, v) in enumerate(objectives.items())]
    summaries.append(TrialSummary("t6", "FAILED", {"lr": 9}, None))
    summaries.append(TrialSummary("t7", "STOPPED", {"lr": 10}, 0.99))  # a partial value never ranks
    trials = [SimpleNamespace(trial_id=s.trial_id, config=s.params, status="TERMINATED",
                              last_result={"objective": s.objective, "partial": s.status == "STOPPED",
                                           "failed": s.status == "FAILED"}) for s in summaries]
    published = {}
    monkeypatch.setattr("clrepro.sweep.trial.final_run", lambda store, ctx, rank, tid, params: f"run-{tid}")
    monkeypatch.setattr("clrepro.tracking.mlflow_store.MlflowStore",
                        lambda *a, **k: SimpleNamespace(set_tags=lambda rid, tags: published.update(tags)))
    cb = PublishRanking(SimpleNamespace(tracking_uri="x", experiment_id="1", parent_run_id="p"), 3, "max")
    cb.publish(trials)
    import json

    ranking = json.loads(published["clrepro.final_ranking"])
    assert [e["source"] for e in ranking] == [t.trial_id for t in _best(summaries, "max", 3)] == ["t2", "t4", "t1"]
    assert ranking[0]["params"] == {"lr": 1} and ranking[0]["run_id"] == "run-t2"
