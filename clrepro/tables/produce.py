"""`clrepro table --run`: produce a table's missing runs (its sweeps, or its experiments' seeds) first."""

from __future__ import annotations

import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from clrepro.tables.sources import RunReader, table_experiment_name
from clrepro.tables.spec import Selector, TableSpec


def experiment_identity(sel: Selector) -> tuple[str, str]:
    """(experiment name, config hash) of an experiment selector: runs match by hash, so edits never mix."""
    from clrepro.config.load import config_hash, load_experiment, resolved_dict

    cfg = load_experiment(sel.experiment, sel.overrides)
    return cfg.name, config_hash(resolved_dict(cfg))


def produce_missing(spec: TableSpec, reader: RunReader, log=print, jobs: int = 1) -> int:
    """Run every sweep or experiment seed the table lacks; returns how many runs were produced.

    Reference runs (independent, joint, random) are deterministic per reference config and seed, so rows that
    share a backbone, optimizer and protocol compute each of them once (a cache for this call only).
    Every seed run uses one torch thread, so a table's numbers do not depend on the machine's cores (float
    reductions split over threads change a run's matrix); `jobs` > 1 runs that many seeds at once, each in its
    own process (small models use cores better side by side than as threads of one run). Jobs go row by row,
    seed by seed, so runs that share references are rarely in flight together."""
    check_sources(spec)
    with tempfile.TemporaryDirectory(prefix="clrepro-refs-") as refs:
        return _produce(spec, reader, log, refs, max(1, int(jobs)))


def check_sources(spec: TableSpec) -> None:
    """Every sweep file and experiment a table would produce, validated before the first run starts."""
    from clrepro.errors import ConfigError
    from clrepro.sweep.spec import load_sweeps

    for i, row in enumerate(spec.rows):
        for bench, sel in row.runs.items():
            if sel.sweep and sel.sweep_file:
                names = [s.name for s in load_sweeps(sel.sweep_file)]
                if sel.sweep not in names:
                    raise ConfigError(f"rows[{i}].runs.{bench}.sweep", f"'{sel.sweep}' is not a sweep of "
                                      f"{sel.sweep_file}", names)
            elif sel.experiment:
                experiment_identity(sel)


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"


def _produce(spec: TableSpec, reader: RunReader, log, refs: str, jobs: int = 1) -> int:
    made = 0
    sweeps: dict[str, tuple] = {}  # sweep name → (its plan, what it is for): every one planned before any runs
    pending: list[tuple[Selector, int, str]] = []
    for row in spec.rows:
        for bench, sel in row.runs.items():
            if sel.sweep:
                if sel.sweep_file and sel.sweep not in sweeps and reader.latest_sweep_run(sel.sweep) is None:
                    from clrepro.sweep.plan import plan_sweep
                    from clrepro.sweep.spec import load_sweeps

                    variants = {s.name: s.variant for s in load_sweeps(sel.sweep_file)}
                    plan = plan_sweep(sel.sweep_file, tracking_uri=spec.tracking_uri, variant=variants.get(sel.sweep))
                    sweeps[sel.sweep] = (sel, plan, f"{row.label} / {bench}")
            elif sel.experiment:
                have = {v.seed for v in reader.read(sel)}
                for seed in sel.seeds:
                    if seed not in have:
                        pending.append((sel, seed, f"{sel.experiment} seed {seed} for {row.label} / {bench}"))
    for name, (sel, plan, what) in sweeps.items():
        from clrepro.sweep.runner import run_sweep

        log(f"running sweep {name} ({sel.sweep_file}) for {what}")
        run_sweep(plan=plan, progress=False)
        made += 1
    if jobs == 1 or len(pending) < 2:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as in the parallel case: a table's numbers never depend on --jobs or the cores
        try:
            for sel, seed, what in pending:
                log(f"running {what}")
                run_experiment_seed(spec.tracking_uri, sel, seed, refs)
        finally:
            torch.set_num_threads(threads)
        return made + len(pending)
    import multiprocessing

    from clrepro.tracking.mlflow_store import MlflowStore, absolute_tracking_uri

    MlflowStore(absolute_tracking_uri(spec.tracking_uri))  # a new store's migrations run here, not in two workers
    log(f"running {len(pending)} seed runs, {jobs} at a time (one torch thread each)")
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_one_thread) as pool:
        futures = [(what, pool.submit(run_experiment_seed, spec.tracking_uri, sel, seed, refs))
                   for sel, seed, what in pending]
        for what, f in futures:
            f.result()  # the first failure propagates (the pool finishes or cancels the rest)
            log(f"done {what}")
    return made + len(pending)


def run_experiment_seed(tracking_uri: str, sel: Selector, seed: int, reference_cache: str | None = None) -> str:
    """One seed of an experiment selector, logged as a seed run in the MLflow experiment 'table/<name>'."""
    from clrepro.config.load import load_experiment
    from clrepro.engine.experiment import ReferenceCache, run_experiment
    from clrepro.tracking.mlflow_store import GROUP, LEVEL, SEED, MlflowStore, absolute_tracking_uri
    from clrepro.tracking.runs import log_experiment_result, run_tags

    cfg = load_experiment(sel.experiment, sel.overrides)
    store = MlflowStore(absolute_tracking_uri(tracking_uri))
    store.ensure_experiment(table_experiment_name(cfg.name))
    run_id = store.create_run(f"{cfg.name}-seed{seed}", {LEVEL: "seed", GROUP: "table", SEED: seed, **run_tags(cfg)})
    try:
        with tempfile.TemporaryDirectory() as d:
            result = run_experiment(cfg, Path(d), seed=seed,
                                    reference_cache=ReferenceCache(reference_cache) if reference_cache else None)
            log_experiment_result(store, run_id, result, Path(d))
        store.set_status(run_id, "FINISHED")
    except BaseException as e:
        store.fail(run_id, e)
        raise
    return run_id
