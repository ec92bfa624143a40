"""`clrepro sweep FILE`: the Optuna search in Ray Tune, the final group, and a summary table."""

from __future__ import annotations

import math


def _fmt(v, scale: float = 100.0) -> str:
    return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{scale * v:.2f}"


def print_summary(outcome) -> None:
    from rich.table import Table

    from clrepro.config.schema import METRICS
    from clrepro.console import console

    spec = outcome.spec
    metric = spec.objective.metric
    trials = sorted(outcome.trials, key=lambda t: (t.status != "DONE",
                                                   -(t.objective or 0) if spec.objective.mode == "max" else (t.objective or 0)))
    keys = list(spec.search_space)
    number = {id(t): i for i, t in enumerate(outcome.trials)}  # Optuna's trial number, as in the history plot

    def name(t) -> str:  # t007: the MLflow trial run's name starts with it
        return f"t{number[id(t)]:03d}" if id(t) in number else t.trial_id

    table = Table(title=f"sweep {spec.name}: {len(trials)} trials, {metric} over seeds {spec.seeds.tune} (%)")
    for col in ("trial", "status", *keys, f"{metric} mean ± std"):
        table.add_column(col, justify="right" if col not in ("trial", "status") else "left")
    for t in trials[:15]:
        value = f"{_fmt(t.objective)} ± {_fmt(t.std)}" if t.status == "DONE" else (t.error or _fmt(t.objective))
        table.add_row(name(t), t.status, *[_param(t.params.get(k)) for k in keys], value[:80])
    console.print(table)
    failed = [t for t in outcome.trials if t.status == "FAILED"]
    for t in failed:
        console.print(f"[red]failed trial {name(t)} ({t.trial_id})[/red]: {t.error}")
    for f in outcome.final:
        trial = f["trial"]
        params = ", ".join(f"{k}={_param(v)}" for k, v in trial.params.items())
        if "error" in f:
            console.print(f"[red]final re-run of {trial.trial_id} failed[/red]: {f['error']}")
            continue
        agg = f["aggregate"]
        ft = Table(title=f"best #{f['rank']} ({name(trial)}): {params} — report seeds {f['seeds']} (%)")
        shown = [m for m in METRICS if m in spec.metrics]
        for m in shown:
            ft.add_column(m, justify="right")
        ft.add_column("n", justify="right")
        ft.add_row(*[f"{_fmt(agg[f'{m}_mean'])} ± {_fmt(agg[f'{m}_std'])}" for m in shown],
                   str(int(agg["AA_n"])))
        console.print(ft)
    if outcome.retried:
        console.print(f"[yellow]{outcome.retried} trial restart(s) after a lost worker (max_failures "
                      f"{spec.max_failures})[/yellow]")
    if outcome.closed_on_resume:
        console.print(f"[dim]closed {outcome.closed_on_resume} run(s) the interrupted driver left RUNNING as "
                      "KILLED[/dim]")
    console.print(f"[dim]wall {outcome.wall_seconds:.1f}s on {outcome.slots} slots: training + evaluation "
                  f"{outcome.engine_seconds:.1f}s ({100 * outcome.efficiency:.1f}%), inside trials "
                  f"{outcome.trial_seconds:.1f}s ({100 * outcome.occupancy:.1f}%); MLflow {outcome.tracking_uri} "
                  f"(experiment '{spec.name}', parent run {outcome.parent_run_id}); Tune {outcome.sweep_dir}[/dim]")


def _param(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def main(args) -> int:
    from clrepro.sweep.runner import plan_sweep, run_sweep
    from clrepro.sweep.spec import load_sweeps

    resume = args.resume if args.resume not in (None, "latest") else (True if args.resume == "latest" else None)
    variants = list(dict.fromkeys(args.variant or [s.variant for s in load_sweeps(args.file)]))  # in file order
    # every variant is checked before the first one starts: a broken last variant is not found hours later
    plans = [plan_sweep(args.file, address=args.address, tracking_uri=args.tracking_uri, resume=resume,
                        tune_path=args.storage, num_cpus=args.num_cpus, variant=variant) for variant in variants]
    ok = True
    for plan in plans:
        outcome = run_sweep(plan=plan, progress=not args.quiet, plugins=args.plugin)
        print_summary(outcome)
        ok = ok and any(t.status == "DONE" for t in outcome.trials)
    return 0 if ok else 1
