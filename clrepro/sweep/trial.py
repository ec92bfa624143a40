"""One sweep trial: its seeds through the engine, reported to Tune per task, logged to MLflow as runs.

Seeds run *inside* the trial rather than as `tune.search.Repeater` copies: one trial is one
configuration, so Optuna sees one value per configuration (the mean over seeds), ASHA can cut a bad
configuration after its first tasks instead of after a whole seed group (Repeater does not work with
trial schedulers), and the MLflow tree stays sweep → trial → seed. A resumed trial finds its finished
seed runs in MLflow by tag and skips them.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clrepro.config.load import from_resolved
from clrepro.config.schema import METRICS
from clrepro.sweep.spec import apply_params
from clrepro.tracking.mlflow_store import GROUP, LEVEL, PARENT, SEED, SWEEP, TAG, TRIAL_ID, MlflowStore
from clrepro.tracking.runs import log_experiment_result, run_tags


class TrialFailed(RuntimeError):
    """A trial whose objective is NaN or undefined."""


@dataclass
class TrialContext:
    """Everything a trial needs, shipped once to the workers (tune.with_parameters)."""

    sweep: str
    base_config: dict
    metrics: list[str]
    objective: str
    mode: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    tune_seeds: list[int]
    num_tasks: int
    cpu: float = 1.0
    gpu: float = 0.0
    ref_cache: str | None = None
    plugins: tuple = ()  # ShippedPlugin: the driver's --plugin regularizers, registered in each worker


def configure_worker(ctx: TrialContext) -> None:
    """Threads = the trial's CPU share, so concurrent trials do not oversubscribe cores; the sweep's plug-ins
    registered in this worker process (once; an actor reused for later trials keeps them)."""
    import torch

    torch.set_num_threads(max(1, int(ctx.cpu)))
    if ctx.plugins:
        from clrepro.plugins import register_shipped

        register_shipped(ctx.plugins)


def trial_config(ctx: TrialContext, params: dict[str, Any]):
    """The experiment config of a trial: base config + sampled hyperparameters, on the trial's device."""
    cfg = apply_params(ctx.base_config, params)
    cfg["metrics"] = list(ctx.metrics)
    cfg["trainer"]["threads"] = max(1, int(ctx.cpu))
    if ctx.gpu > 0:
        cfg["trainer"]["accelerator"] = "cuda"  # Ray sets CUDA_VISIBLE_DEVICES to the trial's GPU
        cfg["trainer"]["devices"] = 1
    return from_resolved(cfg)


def _finite(v) -> float | None:
    return float(v) if v is not None and math.isfinite(float(v)) else None


def report(metrics: dict) -> None:
    """tune.report without undefined values (None, NaN): Tune's loggers reject them."""
    from ray import tune

    tune.report({k: v for k, v in metrics.items()
                 if v is not None and not (isinstance(v, float) and not math.isfinite(v))})


def aggregate(per_seed: list[dict]) -> dict[str, float | None]:
    """Mean, sample std (ddof = 1) and n of each metric over seeds, and the mean of each per-N series."""
    out: dict[str, float | None] = {}
    for m in METRICS:
        vals = [s[m] for s in per_seed if s.get(m) is not None]
        out[f"{m}_mean"] = float(np.mean(vals)) if vals else None
        out[f"{m}_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else (0.0 if vals else None)
        out[f"{m}_n"] = float(len(vals))
    return out


class TaskReporter:
    """Engine listener → Tune: report after each completed task; time axis = tasks done in this trial."""

    def __init__(self, offset: int, metric: str) -> None:
        self.offset, self.metric = offset, metric
        self.first_acc: dict[int, float] = {}

    def on_task_end(self, task_id, accuracies, **kw):
        self.first_acc[task_id] = accuracies[-1]
        if self.metric == "BWT":
            n = len(accuracies)
            value = float(np.mean([accuracies[t] - self.first_acc[t + 1] for t in range(n - 1)])) if n > 1 else 0.0
        else:
            value = float(np.mean(accuracies))
        report({"tasks_done": self.offset + task_id, "objective": value, "partial": True})


def _seed_record(metrics: dict, acc: np.ndarray, engine_seconds: float) -> dict:
    rec = {m: _finite(metrics.get(m)) for m in METRICS}
    rec["acc"], rec["engine_seconds"] = acc, engine_seconds
    return rec


def run_seed(ctx: TrialContext, store: MlflowStore, cfg, params: dict, seed: int, trial_run: str, trial_key: str,
             group: str, listeners=(), label: str | None = None) -> dict:
    """One seed run (main + references) logged as a grandchild run named `<label> seed=<seed>` (label: the
    trial's short name, `t007`); a finished one is reused, not rerun."""
    from clrepro.tracking.names import params_label
    from clrepro.engine.experiment import ReferenceCache, run_experiment
    from clrepro.metrics.io import read_acc_matrix

    tags = {LEVEL: "seed", SWEEP: ctx.sweep, TRIAL_ID: trial_key, GROUP: group, SEED: seed}
    for old in store.find_runs({**tags, PARENT: trial_run}):
        if old.info.status == "FINISHED":
            with tempfile.TemporaryDirectory() as d:
                acc = read_acc_matrix(store.download(old.info.run_id, "acc.csv", Path(d)))
            m = old.data.metrics
            return _seed_record(m, acc, 0.0) | {"reused": True, "seed": seed}
        # interrupted mid-seed (a lost worker, a killed sweep): closed as KILLED, then replaced by a new run
        if old.info.status == "RUNNING":
            store.set_tags(old.info.run_id, {TAG + "ended_by": "replaced after an interruption"})
            store.set_status(old.info.run_id, "KILLED")
        store.delete_run(old.info.run_id)
    label = label or trial_key
    run_id = store.create_run(f"{label} seed={seed}", {**tags, **run_tags(cfg)}, parent=trial_run)
    title = f"{ctx.sweep} {label} seed={seed}: {params_label(params, ctx.base_config)}".rstrip(": ")
    with tempfile.TemporaryDirectory() as d:
        try:
            store.log_params(run_id, {**params, "seed": seed})
            cache = ReferenceCache(ctx.ref_cache) if ctx.ref_cache else None
            # per-seed plots for the report seeds (the published numbers); a search trial's seeds log their
            # matrices and metrics, and the trial run carries the mean heatmap and curves
            result = run_experiment(cfg, Path(d), listeners, seed=seed, reference_cache=cache, title=title,
                                    plots=group != "search")
            log_experiment_result(store, run_id, result, Path(d))
            store.set_status(run_id, "FINISHED")
        except BaseException as e:
            if any(Path(d).iterdir()):  # a failed run's partial outputs (matrix so far, manifest with status)
                try:
                    store.log_artifacts(run_id, Path(d))
                except Exception:  # the store itself failing must not hide the run's own error
                    pass
            store.end_with(run_id, e)
            raise
    return _seed_record(result.metrics, result.main.acc, result.engine_seconds) | {"seed": seed}


def log_trial_summary(store: MlflowStore, run_id: str, records: list[dict], title: str | None = None) -> dict:
    """Mean/std/n of the metrics the seeds computed (none of DD or AGR in a CL sweep), the mean per-N AA series,
    and the mean heatmap and curves on a trial run (titled by the run's name unless `title` is given)."""
    from clrepro.tracking.plots import accuracy_heatmap, task_curves

    agg = aggregate(records)
    mean_acc = None
    if records:
        stack = np.stack([r["acc"] for r in records])
        with np.errstate(invalid="ignore"):  # cells above the diagonal stay NaN
            mean_acc = np.where(np.isnan(stack).all(0), np.nan, np.nansum(stack, 0) / (~np.isnan(stack)).sum(0))
    applies = {k: v for k, v in agg.items() if agg.get(f"{k.rsplit('_', 1)[0]}_n")}
    store.log_metrics(run_id, applies | {"engine_seconds": sum(r["engine_seconds"] for r in records)})
    if mean_acc is not None:
        store.log_series(run_id, {"AA_mean": [float(np.mean(row[~np.isnan(row)])) for row in mean_acc]}, {})
        if title is None:
            title = store.client.get_run(run_id).info.run_name or ""
        seeds = f"mean over {len(records)} seeds ({', '.join(str(r['seed']) for r in records if 'seed' in r)})"
        title = f"{title}: {seeds}" if title else seeds
        with tempfile.TemporaryDirectory() as d:
            accuracy_heatmap(mean_acc, Path(d) / "acc_matrix_mean.png", title)
            task_curves(mean_acc, Path(d) / "task_curves_mean.png", title)
            store.log_artifacts(run_id, Path(d))
    return agg


def trial_run(store: MlflowStore, ctx: TrialContext, trial_key: str, group: str, params: dict,
              name: str | None = None) -> str:
    """The trial's MLflow run: found by tag if a resumed trial already made one, else created as `name`."""
    tags = {LEVEL: "trial", SWEEP: ctx.sweep, TRIAL_ID: trial_key, GROUP: group}
    existing = store.find_runs({**tags, PARENT: ctx.parent_run_id})
    if existing:
        run_id = existing[0].info.run_id
        for dup in existing[1:]:
            store.delete_run(dup.info.run_id)
        store.set_status(run_id, "RUNNING")
        return run_id
    run_id = store.create_run(name or (f"trial-{trial_key}" if group == "search" else f"final-{trial_key}"),
                              tags, parent=ctx.parent_run_id)
    store.log_params(run_id, params)
    return run_id


def _trial_error(e: BaseException) -> str:
    """One line for the summary: the run's own error (RunFailed already names its stage and cause)."""
    first = (str(e).strip().splitlines() or [""])[0][:300]
    from clrepro.engine.experiment import RunFailed

    return first if isinstance(e, RunFailed) else f"{type(e).__name__}: {first}".rstrip(": ")


def _log_traceback(e: BaseException) -> None:
    """The trial's traceback goes to its Tune log folder (error.txt), never to the sweep's terminal."""
    import traceback

    from ray import tune

    try:
        folder = Path(tune.get_context().get_trial_dir())
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "error.txt").write_text("".join(traceback.format_exception(e)))
    except Exception:  # no trial folder (a test calling the function directly): the MLflow error.txt remains
        pass


def tune_trainable(config: dict, ctx: TrialContext) -> None:
    """The Tune function trainable: run the tune seeds, report per task, end with mean objective.

    A trial's own error (a NaN loss, an exception in the engine) ends it with a `failed` result: its runs are
    FAILED in MLflow, Optuna is told FAIL, its traceback goes to the trial folder's error.txt, and Tune does
    not retry it. Only a lost worker (node or actor death) reaches Tune's FailureConfig and is retried."""
    from ray import tune

    configure_worker(ctx)
    from clrepro.sweep.final import FINAL_KEY

    if FINAL_KEY in config:
        return run_final_seed(ctx, config)
    from clrepro.tracking.names import current_trial_label, params_label

    trial_key = tune.get_context().get_trial_id()
    store = MlflowStore(ctx.tracking_uri, ctx.experiment_id)
    params = dict(config)
    label = current_trial_label(trial_key)  # t007: Optuna's trial number, as in the optimisation history
    run_id = trial_run(store, ctx, trial_key, "search", params,
                       f"{label} {params_label(params, ctx.base_config)}".strip())
    records = []
    try:
        import ray

        store.set_tags(run_id, {TAG + "node_id": ray.get_runtime_context().get_node_id()})
        cfg = trial_config(ctx, params)
        T, seeds = ctx.num_tasks, ctx.tune_seeds
        for i, seed in enumerate(seeds):
            offset = i * T
            rec = run_seed(ctx, store, cfg, params, seed, run_id, trial_key, "search",
                           [TaskReporter(offset, ctx.objective)], label=label)
            records.append(rec)
            if rec.get("reused"):
                report({"tasks_done": offset + T, "objective": rec[ctx.objective] or 0.0, "partial": True})
        agg = log_trial_summary(store, run_id, records)
        value = agg[f"{ctx.objective}_mean"]
        if value is None or not math.isfinite(value):
            raise TrialFailed(f"objective {ctx.objective} is undefined (NaN) over seeds {seeds}")
        store.set_status(run_id, "FINISHED")
    except Exception as e:  # the trial's own failure: recorded, reported, not retried
        _log_traceback(e)
        store.fail(run_id, e)
        report({"tasks_done": len(records) * ctx.num_tasks, "partial": False, "failed": True,
                "error": _trial_error(e)})
        return
    except BaseException as e:  # stopped (scheduler, Ctrl-C) or the worker going away
        store.end_with(run_id, e)
        raise
    report({"tasks_done": len(seeds) * T, "objective": value, "partial": False,
            "objective_std": agg[f"{ctx.objective}_std"], "n": len(records),
            "engine_seconds": sum(r["engine_seconds"] for r in records),
            **{k: v for k, v in agg.items() if v is not None and k.endswith("_mean")}})


def final_key(rank: int, source: str) -> str:
    return f"final{rank}-{source}"


def final_run(store: MlflowStore, ctx: TrialContext, rank: int, source: str, params: dict) -> str:
    """The MLflow run of the rank-th best configuration's final group (found again on resume), named
    `final1 t007 s_max=200 lr=8.4e-3` after its rank, its search trial's short name and its hyperparameters."""
    from clrepro.tracking.names import params_label

    found = store.find_runs({LEVEL: "trial", SWEEP: ctx.sweep, TRIAL_ID: source, PARENT: ctx.parent_run_id})
    label = (found[0].info.run_name or source).split(" ")[0] if found else source
    name = f"final{rank} {label} {params_label(params, ctx.base_config)}".strip()
    run_id = trial_run(store, ctx, final_key(rank, source), "final", params, name)
    store.set_tags(run_id, {TAG + "rank": rank, TAG + "source_trial": source})
    return run_id


def run_final_seed(ctx: TrialContext, config: dict) -> None:
    """A final-group trial: wait for the search's ranking, then one report seed of the rank-th best."""
    from clrepro.sweep.final import FINAL_KEY, wait_for_ranking

    final = config[FINAL_KEY]
    t0 = time.perf_counter()
    entry = wait_for_ranking(ctx, final["rank"])
    waited = time.perf_counter() - t0
    if entry is None:  # fewer finished search trials than top_k
        report({"partial": False, "final": True, "skipped": True, "wait_seconds": waited})
        return
    params, key = entry["params"], final_key(entry["rank"], entry["source"])
    store = MlflowStore(ctx.tracking_uri, ctx.experiment_id)
    try:
        rec = run_seed(ctx, store, trial_config(ctx, params), params, final["seed"], entry["run_id"], key, "final",
                       label=f"final{entry['rank']}")
    except Exception as e:  # recorded on the seed run; the final group's aggregate reports it
        _log_traceback(e)
        report({"partial": False, "final": True, "failed": True, "error": _trial_error(e), "seed": final["seed"],
                "rank": entry["rank"], "source": entry["source"], "run_id": entry["run_id"],
                "wait_seconds": waited})
        return
    report({"objective": rec[ctx.objective], "partial": False, "final": True, "seed": final["seed"],
            "rank": entry["rank"], "source": entry["source"], "run_id": entry["run_id"],
            "acc": rec["acc"].tolist(), "engine_seconds": rec["engine_seconds"], "wait_seconds": waited,
            **{m: rec[m] for m in METRICS}})
