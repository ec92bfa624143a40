"""The sweep driver: Ray (local or `--address`), Tune + OptunaSearch, MLflow parent run, final group, summary."""

from __future__ import annotations

import logging
import math
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from clrepro.config.load import from_resolved
from clrepro.config.schema import METRICS
from clrepro.errors import UserError
from clrepro.sweep.plan import (SweepPlan, base_config, check_resources_against,  # noqa: F401 (re-exported)
                                plan_sweep)
from clrepro.sweep.spec import SweepSpec, grid_size, optuna_space
from clrepro.sweep.trial import TrialContext, log_trial_summary
from clrepro.tracking.mlflow_store import (GROUP, LEVEL, PARENT, SWEEP, SWEEP_DIR, TAG, TRIAL_ID, MlflowStore,
                                           flatten)


@dataclass
class TrialSummary:
    trial_id: str
    status: str
    params: dict
    objective: float | None = None
    std: float | None = None
    n: int = 0
    error: str = ""
    engine_seconds: float = 0.0


@dataclass
class SweepOutcome:
    """What a sweep did: its trials, the final group's aggregate, where it lives, how long it took."""

    spec: SweepSpec
    sweep_dir: Path
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    trials: list[TrialSummary] = field(default_factory=list)
    final: list[dict] = field(default_factory=list)
    wall_seconds: float = 0.0
    engine_seconds: float = 0.0
    trial_seconds: float = 0.0  # time inside trial functions (Tune's time_total_s), logging included
    slots: int = 1
    retried: int = 0  # trial restarts after a lost worker (Tune's FailureConfig)
    closed_on_resume: int = 0  # runs an earlier, killed driver left RUNNING, closed as KILLED on --resume

    @property
    def efficiency(self) -> float:
        """Share of the wall time (× concurrent slots) spent training and evaluating in the engine."""
        return self.engine_seconds / max(self.wall_seconds * self.slots, 1e-9)

    @property
    def occupancy(self) -> float:
        """Share of the wall time (× slots) that trials were running (the rest: start-up, scheduling, idle)."""
        return self.trial_seconds / max(self.wall_seconds * self.slots, 1e-9)


class SweepInterrupted(UserError):
    """The sweep was interrupted (Ctrl-C); Tune saved its state and `--resume` continues it."""

    exit_code = 130


def _interrupted(results, total: int) -> bool:
    """Whether Tune stopped before every trial ended (it returns normally after a SIGINT)."""
    trials = getattr(getattr(results, "_experiment_analysis", None), "trials", None)
    if trials is None:
        return len(results) < total
    return len(trials) < total or any(t.status not in ("TERMINATED", "ERROR") for t in trials)


def _check_address(address: str) -> None:
    """`--address`: auto, ray://..., or HOST:PORT of a GCS that answers (ray.init would otherwise wait)."""
    if address in ("auto", "local") or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise UserError(f"--address {address}: expected auto, HOST:PORT or ray://HOST:PORT")
    import socket

    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as e:
        raise UserError(f"--address {address}: no Ray cluster answers there ({e.strerror or e})") from None


def _init_ray(address: str | None, num_cpus: int | None):
    """Connect to a Ray cluster, or start a local one; returns (ray, whether we started it).

    A local sweep always starts its own instance (`address="local"`): it never joins another cluster running
    on the machine, whatever RAY_ADDRESS says."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")  # a failed trial's last result: no objective
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")  # tracebacks go to the trial folders' error.txt
    if not address:
        # a local cluster: every process must agree on the auth mode (docs/cluster.md); its own, not the shell's
        os.environ["RAY_AUTH_MODE"] = "disabled"
        os.environ.pop("RAY_ADDRESS", None)
    else:
        _check_address(address)
    import ray

    if ray.is_initialized():
        return ray, False
    kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    if not address:
        # Tune's trials run in actors, which never use the pre-started task workers: starting those would
        # only compete with the first trials for the CPUs.
        kwargs["_system_config"] = {"prestart_worker_first_driver": False}
    try:
        ray.init(**(dict(address=address) if address else dict(address="local", num_cpus=num_cpus)), **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        if not address:
            raise UserError(f"cannot start a local Ray instance ({str(e).splitlines()[0]})") from None
        raise UserError(f"--address {address}: cannot reach Ray ({str(e).splitlines()[0]})") from None
    return ray, True


def _check_resources(ray, spec: SweepSpec, source: str) -> None:
    """Fail fast when no node of the cluster can ever hold one trial (Tune would wait forever)."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    total = dict(ray.cluster_resources())
    largest = {k: max((n.get(k, 0) for n in nodes), default=0) for k in ("CPU", "GPU")}
    check_resources_against(total, largest if len(nodes) > 1 else total, spec, source, "the cluster")


class Background:
    """Run a function in a thread (Hydra composition, MLflow set-up) while Ray starts in the main thread."""

    def __init__(self, fn, *args) -> None:
        self.result, self.error = None, None

        def target():
            try:
                self.result = fn(*args)
            except BaseException as e:  # re-raised in the main thread by join()
                self.error = e

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def join(self):
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.result




DRIVER = TAG + "driver"  # host:pid:start of the process driving a sweep, to tell a dead driver from a live one


def _process_start(pid: int) -> str:
    try:  # field 22 of /proc/PID/stat: start time since boot (tells a reused PID apart)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "?"


def _driver_id() -> str:
    import socket

    return f"{socket.gethostname()}:{os.getpid()}:{_process_start(os.getpid())}"


def _driver_alive(driver: str) -> bool:
    """Whether the driver a tag names still runs (unknowable for another host: assumed alive)."""
    import socket

    host, _, rest = driver.partition(":")
    pid, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    return Path(f"/proc/{pid}").exists() and _process_start(int(pid)) == start


def _close_dead_drivers(store: MlflowStore, sweep: str) -> int:
    """Parent runs of this sweep name left RUNNING by a driver that died (kill -9, a crash) on this host get
    KILLED with their RUNNING trial and seed runs, even when nobody resumes them."""
    closed = 0
    for run in store.find_runs({LEVEL: "sweep", SWEEP: sweep}, statuses=["RUNNING"]):
        driver = run.data.tags.get(DRIVER)
        if driver and not _driver_alive(driver):
            closed += _close_running(store, sweep, run.info.run_id, "KILLED", "its sweep driver died")
            store.set_tags(run.info.run_id, {TAG + "ended_by": "its sweep driver died"})
            store.set_status(run.info.run_id, "KILLED")
            closed += 1
    return closed


def _parent_run(store: MlflowStore, spec: SweepSpec, sweep_dir: Path, spec_path: Path) -> str:
    tags = {LEVEL: "sweep", SWEEP: spec.name, SWEEP_DIR: str(sweep_dir)}
    existing = store.find_runs(tags)
    if existing:
        store.set_tags(existing[0].info.run_id, {DRIVER: _driver_id()})
        store.set_status(existing[0].info.run_id, "RUNNING")
        return existing[0].info.run_id
    run_id = store.create_run(sweep_dir.name, {**tags, DRIVER: _driver_id()})
    import dataclasses

    store.log_params(run_id, flatten(dataclasses.asdict(spec)))
    store.log_text(run_id, spec_path.read_text(errors="replace"), "sweep.yaml")
    return run_id


def _sweep_runs(store: MlflowStore, sweep: str, parent: str, statuses=None) -> tuple[list, list]:
    """(trial-level runs under the parent, seed-level runs under those trials) of one sweep."""
    trials = store.find_runs({LEVEL: "trial", SWEEP: sweep, PARENT: parent})
    ids = {t.info.run_id for t in trials}
    seeds = [r for r in store.find_runs({LEVEL: "seed", SWEEP: sweep}, statuses=statuses)
             if r.data.tags.get(PARENT) in ids]
    if statuses is not None:
        trials = [t for t in trials if t.info.status in set(statuses)]
    return trials, seeds


def _close_running(store: MlflowStore, sweep: str, parent: str, status: str, reason: str) -> int:
    """Every trial and seed run of the sweep still RUNNING gets `status` (KILLED: stopped; FAILED: errored)."""
    trials, seeds = _sweep_runs(store, sweep, parent, statuses=["RUNNING"])
    for run in [*seeds, *trials]:
        store.set_tags(run.info.run_id, {TAG + "ended_by": reason})
        store.set_status(run.info.run_id, status)
    return len(trials) + len(seeds)


def _searcher(spec: SweepSpec, n_search: int):
    import optuna
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = optuna_space(spec)
    s = spec.sampler
    if s.name == "grid":
        sampler = optuna.samplers.GridSampler({k: d.choices for k, d in spec.search_space.items()}, seed=s.seed)
    elif s.name == "random":
        sampler = optuna.samplers.RandomSampler(seed=s.seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=s.n_startup_trials)
    from clrepro.sweep.final import FinalGroupSearcher

    search = OptunaSearch(space, metric="objective", mode=spec.objective.mode, sampler=sampler)
    top_k = spec.final.top_k if spec.seeds.report else 0
    search = FinalGroupSearcher(search, n_search, spec.seeds.report, top_k, spec.objective.mode)
    return ConcurrencyLimiter(search, max_concurrent=spec.max_concurrent_trials)


def _scheduler(spec: SweepSpec, max_t: int):
    if spec.scheduler.name == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr="tasks_done", metric="objective", mode=spec.objective.mode, max_t=max_t,
                         grace_period=spec.scheduler.grace_period, reduction_factor=spec.scheduler.reduction_factor)


def _summaries(results) -> list[TrialSummary]:
    from clrepro.sweep.final import FINAL_KEY

    out = []
    for r in results:
        if FINAL_KEY in (r.config or {}):
            continue
        m = r.metrics or {}
        params = {k: v for k, v in (r.config or {}).items()}
        tid = m.get("trial_id") or Path(r.path).name
        if r.error is not None:
            text = str(r.error).strip().splitlines()
            msg = next((l for l in reversed(text) if l.strip() and not l.startswith(" ")), str(r.error))
            out.append(TrialSummary(tid, "FAILED", params, error=msg[:300]))
        elif m.get("failed"):
            out.append(TrialSummary(tid, "FAILED", params, error=str(m.get("error", "trial failed"))[:300]))
        elif m.get("partial", True):
            out.append(TrialSummary(tid, "STOPPED", params, objective=m.get("objective")))
        else:
            out.append(TrialSummary(tid, "DONE", params, m.get("objective"), m.get("objective_std"),
                                    int(m.get("n", 0)), engine_seconds=m.get("engine_seconds", 0.0)))
    return out


def _best(trials: list[TrialSummary], mode: str, k: int) -> list:
    """The k best finished search trials, by the sweep's one ranking (the final group's too)."""
    from clrepro.sweep.final import Candidate, rank_best

    return rank_best([Candidate(t.trial_id, t.params, t.objective) for t in trials if t.status == "DONE"], mode, k)


def _final_summaries(store: MlflowStore, results, trials: list[TrialSummary]) -> list[dict]:
    """Aggregate the final group's seed trials per best configuration and log mean ± std on its final run."""
    import numpy as np

    from clrepro.sweep.final import FINAL_KEY

    by_rank: dict[int, dict] = {}
    for r in results:
        final = (r.config or {}).get(FINAL_KEY)
        m = r.metrics or {}
        if not final or m.get("skipped"):
            continue
        entry = by_rank.setdefault(final["rank"], {"records": [], "errors": []})
        if m.get("run_id"):
            entry.update(run_id=m["run_id"], source=m["source"])
        if r.error is not None or m.get("acc") is None:
            last = str(r.error).strip().splitlines()[-1] if r.error else m.get("error", "no result")
            entry["errors"].append(f"seed {final['seed']}: {last}")
        else:
            entry["records"].append({**{k: m.get(k) for k in METRICS}, "seed": m.get("seed"),
                                     "acc": np.array(m["acc"], dtype=float), "engine_seconds": m.get("engine_seconds", 0.0)})
    by_id = {t.trial_id: t for t in trials}
    out = []
    for rank in sorted(by_rank):
        e = by_rank[rank]
        trial = by_id.get(e.get("source"), TrialSummary(e.get("source", "?"), "DONE", {}))
        if e["errors"] or "run_id" not in e:
            error = "; ".join(e["errors"]) or "no final seed finished"
            if "run_id" in e:
                store.fail(e["run_id"], error)
            out.append({"rank": rank, "trial": trial, "error": error})
            continue
        records = sorted(e["records"], key=lambda r: r["seed"])
        agg = log_trial_summary(store, e["run_id"], records)
        store.set_status(e["run_id"], "FINISHED")
        out.append({"rank": rank, "trial": trial, "aggregate": agg, "seeds": [r["seed"] for r in records],
                    "engine_seconds": sum(r["engine_seconds"] for r in records), "run_id": e["run_id"]})
    return out


def _tune_trials(results) -> list:
    return list(getattr(getattr(results, "_experiment_analysis", None), "trials", None) or [])


def _reconcile(store: MlflowStore, ctx: TrialContext, results, trials: list[TrialSummary]) -> None:
    """No run of the sweep stays RUNNING once it ends. Trial runs a trial could not close itself (stopped by the
    scheduler, worker lost) get their trial's end state, their seed runs too; a trial run whose Tune trial no
    longer exists (started just before a kill -9, after Tune's last checkpoint, then suggested again under
    another id on --resume) is closed as KILLED and deleted with its seed runs: every trial appears once."""
    by_id = {t.trial_id: t for t in trials}
    tune_ids = {t.trial_id for t in _tune_trials(results)}
    runs, seeds = _sweep_runs(store, ctx.sweep, ctx.parent_run_id)
    children: dict[str, list] = {}
    for sr in seeds:
        children.setdefault(sr.data.tags.get(PARENT), []).append(sr)
    for run in runs:
        rid, tid, group = run.info.run_id, run.data.tags.get(TRIAL_ID), run.data.tags.get(GROUP)
        kids = children.get(rid, [])
        if group == "search" and tune_ids and tid not in tune_ids:
            for r in [*kids, run]:
                if r.info.status == "RUNNING":
                    store.set_tags(r.info.run_id, {TAG + "ended_by": "trial lost with a killed driver, re-run"})
                    store.set_status(r.info.run_id, "KILLED")
                store.delete_run(r.info.run_id)
            continue
        t = by_id.get(tid)
        failed = t is not None and t.status == "FAILED"
        for r in [*kids, run]:
            if r.info.status != "RUNNING":
                continue
            if failed:
                store.fail(r.info.run_id, t.error or "trial failed")
            elif t is not None and t.status == "STOPPED":
                store.set_tags(r.info.run_id, {TAG + "stopped_by": "scheduler"})
                store.set_status(r.info.run_id, "KILLED")
            else:
                store.set_tags(r.info.run_id, {TAG + "ended_by": "sweep ended before this run"})
                store.set_status(r.info.run_id, "KILLED")


def _optuna_plots(store: MlflowStore, parent: str, spec: SweepSpec, trials: list[TrialSummary]) -> None:
    """Optuna's optimisation history and parameter importances, rebuilt from the trials, on the parent run."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.trial import TrialState, create_trial

    space = optuna_space(spec)
    study = optuna.create_study(direction="maximize" if spec.objective.mode == "max" else "minimize")
    for t in trials:
        params = {k: t.params[k] for k in space if k in t.params}
        if len(params) != len(space):
            continue
        ok = t.status == "DONE" and t.objective is not None and math.isfinite(t.objective)
        study.add_trial(create_trial(params=params, distributions=space, value=t.objective if ok else None,
                                     state=TrialState.COMPLETE if ok else TrialState.FAIL))
    with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from optuna.visualization import matplotlib as ovm

        for name, plot in (("optuna_history.png", ovm.plot_optimization_history),
                           ("optuna_importances.png", ovm.plot_param_importances)):
            try:
                ax = plot(study)
                if hasattr(ax, "set_title"):  # titled with the sweep and its objective
                    from clrepro.tracking.plots import style_optuna_axes

                    style_optuna_axes(ax, "history" if "history" in name else "importances", spec.name,
                                      spec.objective.metric, spec.objective.mode)
                fig = ax.figure if hasattr(ax, "figure") else ax.flatten()[0].figure
                fig.set_size_inches(7, 4)
                fig.tight_layout()
                fig.savefig(Path(d) / name, dpi=110)
                plt.close(fig)
            except (ValueError, RuntimeError, ZeroDivisionError):
                continue  # e.g. importances need two finished trials with varying parameters
        store.log_artifacts(parent, Path(d))


def run_sweep(spec_path: str | Path | None = None, address: str | None = None, tracking_uri: str | None = None,
              resume: str | bool | None = None, tune_path: str | None = None, num_cpus: int | None = None,
              progress: bool = True, variant: str | None = None, plugins: list[str] = (),
              plan: SweepPlan | None = None) -> SweepOutcome:
    """Validate, search with Tune + Optuna, re-run the best on the report seeds, log everything to MLflow.

    `plugins` (`--plugin`): regularizer plug-ins loaded here and shipped with the trial context, so every worker,
    local or on another node, registers them before it builds a trial's config. `plan`: a `plan_sweep` made
    earlier (the other arguments but `progress` and `plugins` are then its own).

    Everything the inputs decide is checked before Ray starts (the sweep file, the experiment and every
    search-space value, the tracking URI, the storage path) or right after (the resources a trial asks
    against the cluster's), before anything is written. Once the parent run exists, the sweep ends with no
    run RUNNING: FINISHED, FAILED (an error), or KILLED (interrupted; `--resume` continues it)."""
    start = time.perf_counter()
    from clrepro.plugins import ship

    shipped = tuple(ship(p) for p in plugins)  # registered here first: the sweep file may name them
    if plan is None:
        plan = plan_sweep(spec_path, address, tracking_uri, resume, tune_path, num_cpus, variant)
    spec, spec_path, uri, root, base = plan.spec, plan.spec_path, plan.uri, plan.root, plan.base
    sweep_dir, resuming, address, num_cpus = plan.sweep_dir, plan.resuming, plan.address, plan.num_cpus
    if address and uri.startswith("sqlite:"):
        from clrepro.console import console

        console.print("[yellow]note: a multi-node sweep needs an MLflow server all nodes reach "
                      "(--tracking-uri http://HOST:PORT); sqlite works only where every node shares this disk[/yellow]")

    def open_store():
        from clrepro.tracking.names import sweep_description

        try:
            store = MlflowStore(uri)
            return store, store.ensure_experiment(spec.name, description=sweep_description(spec, base))
        except Exception as e:  # the store refuses (permissions, a server error): one line, nothing started
            raise UserError(f"tracking URI {uri}: MLflow cannot use it ({str(e).strip().splitlines()[0][:200]})") \
                from None

    def prepare(with_store: bool):  # while Ray starts: Tune and Optuna's imports, and for a local sweep MLflow's
        import ray.tune.search.optuna  # noqa: F401  store (a new sqlite file runs its migrations, ~2 s)

        return open_store() if with_store else None

    # an --address sweep opens the store only once the cluster answered, so a wrong address leaves no store behind
    setup = Background(prepare, address is None)
    started = False
    store, parent, ctx = None, None, None
    try:
        ray, started = _init_ray(address, num_cpus)
        opened = setup.join()
        store, exp_id = opened if opened is not None else open_store()
        _check_resources(ray, spec, str(spec_path))
        closed = _close_dead_drivers(store, spec.name)  # this sweep's (on --resume) and any other dead one's
        parent = _parent_run(store, spec, sweep_dir, spec_path)
        for p in shipped:  # what the workers ran, beside the sweep file
            store.log_text(parent, p.source.decode("utf-8", "replace") if p.source else p.spec,
                           f"plugins/{Path(p.filename).name if p.source else p.spec[3:] + '.entry_point'}")
        if shipped:
            store.set_tags(parent, {TAG + "plugins": ", ".join(f"{p.name}={p.spec}" for p in shipped)})
        if resuming:  # a driver on another host may have run it: what it left RUNNING is not running now
            closed += _close_running(store, spec.name, parent, "KILLED", "an earlier run of the sweep was killed; "
                                     "resumed")
        from ray import tune

        T = from_resolved(base).benchmark.get("num_tasks")
        ctx = TrialContext(spec.name, base, list(spec.metrics), spec.objective.metric, spec.objective.mode, uri,
                           exp_id, parent, list(spec.seeds.tune), int(T), spec.resources.cpu, spec.resources.gpu,
                           str(sweep_dir / "refcache"), plugins=shipped)
        from clrepro.sweep.trial import tune_trainable

        trainable = tune.with_resources(tune.with_parameters(tune_trainable, ctx=ctx),
                                        {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})
        n_search = grid_size(spec) if spec.sampler.name == "grid" else spec.num_samples
        n_final = spec.final.top_k * len(spec.seeds.report)
        total = n_search + n_final
        slots = int(max(1, min(spec.max_concurrent_trials, ray.cluster_resources().get("CPU", 1) // spec.resources.cpu)))
        if resuming:
            tuner = tune.Tuner.restore(str(sweep_dir), trainable, resume_unfinished=True, resume_errored=False,
                                       restart_errored=False)
        else:
            from clrepro.sweep.callbacks import SweepProgress

            from clrepro.sweep.final import PublishRanking
            from clrepro.tracking.names import tune_trial_name

            callbacks = [PublishRanking(ctx, spec.final.top_k if spec.seeds.report else 0, spec.objective.mode)]
            if progress:
                callbacks.append(SweepProgress(total, spec.objective.metric, spec.objective.mode))
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(search_alg=_searcher(spec, n_search), scheduler=_scheduler(spec, len(spec.seeds.tune) * T),
                                            num_samples=total, reuse_actors=True,
                                            trial_name_creator=tune_trial_name),  # t007: Optuna's number
                run_config=tune.RunConfig(name=sweep_dir.name, storage_path=str(root), verbose=0,
                                          callbacks=callbacks,
                                          failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                                          checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
        logging.getLogger("ray.tune").setLevel(logging.WARNING)
        logging.getLogger("ray.tune.search.optuna").setLevel(logging.ERROR)  # "Study.stop ..." at the end
        logging.getLogger("tensorboardX").setLevel(logging.ERROR)  # "NaN or Inf found" for a failed trial's result
        results = tuner.fit()
        if _interrupted(results, total):
            _close_running(store, spec.name, parent, "KILLED", "sweep interrupted (Ctrl-C); --resume continues it")
            store.set_tags(parent, {TAG + "interrupted": "true"})
            store.set_status(parent, "KILLED")
            raise SweepInterrupted(f"{spec_path}: sweep interrupted; its state is saved in {sweep_dir}: "
                                   f"continue with `clrepro sweep {spec_path} --resume`")
        trials = _summaries(results)
        plots = Background(_optuna_plots, store, parent, spec, trials)  # beside the final group's bookkeeping
        best = _best(trials, spec.objective.mode, spec.final.top_k)
        final = _final_summaries(store, results, trials)
        _reconcile(store, ctx, results, trials)
        if best:
            store.set_tags(parent, {TAG + "best_trial": best[0].trial_id})
            store.log_params(parent, {f"best.{k}": v for k, v in best[0].params.items()})
            store.log_metrics(parent, {f"best_{spec.objective.metric}": best[0].objective})
        plots.join()
        outcome = SweepOutcome(spec, sweep_dir, uri, exp_id, parent, trials, final)
        outcome.engine_seconds = sum(t.engine_seconds for t in trials) + sum(f.get("engine_seconds", 0) for f in final)
        outcome.slots = slots
        outcome.retried = sum(getattr(t, "num_failures", 0) or 0 for t in _tune_trials(results))
        outcome.closed_on_resume = closed
        outcome.trial_seconds = sum((r.metrics or {}).get("time_total_s", 0.0) - (r.metrics or {}).get("wait_seconds", 0.0)
                                    for r in results)
        outcome.wall_seconds = time.perf_counter() - start
        store.log_metrics(parent, {"wall_seconds": outcome.wall_seconds, "efficiency": outcome.efficiency,
                                   "occupancy": outcome.occupancy,
                                   "trials_done": sum(t.status == "DONE" for t in trials),
                                   "trials_failed": sum(t.status == "FAILED" for t in trials),
                                   "trials_retried": outcome.retried})
        store.set_status(parent, "FINISHED")
        return outcome
    except SweepInterrupted:
        raise
    except BaseException as e:  # the sweep itself failed or was stopped: its runs say so, none stays RUNNING
        if store is not None and parent is not None:
            stopped = not isinstance(e, Exception)
            try:
                _close_running(store, spec.name, parent, "KILLED" if stopped else "FAILED",
                               "sweep interrupted" if stopped else f"sweep failed: {type(e).__name__}")
                if stopped:
                    store.set_tags(parent, {TAG + "interrupted": "true"})
                    store.set_status(parent, "KILLED")
                else:
                    store.fail(parent, e)
            except Exception:  # the store is what failed: nothing more can be recorded
                pass
        raise
    finally:
        setup.thread.join()
        if started:
            ray.shutdown()
