"""Terminal output with rich: live progress per task and epoch, a summary table at the end."""

from __future__ import annotations

import math

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from clrepro.engine.listeners import Listener

console = Console(stderr=False, highlight=False)


def pct(v) -> str:
    return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{100 * v:.2f}"


class ConsoleProgress(Listener):
    """A rich progress bar over all epochs of a run; one line per finished task."""

    def __init__(self, label: str = "", quiet: bool = False) -> None:
        self.label, self.quiet = label, quiet
        self.progress: Progress | None = None
        self.bar = None

    def on_run_start(self, name, num_tasks, seed, algorithm, **kw):
        self.num_tasks = num_tasks
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=console, transient=True)
        self.progress.start()
        self.bar = self.progress.add_task(f"{self.label or name} [{algorithm}, seed {seed}]", total=None)

    def on_task_start(self, task_id, num_tasks, num_batches, epochs, **kw):
        if self.progress is not None:
            self.progress.update(self.bar, total=epochs or 1, completed=0,
                                 description=f"{self.label} task {task_id}/{num_tasks}")

    def on_epoch_end(self, task_id, epoch, logs, **kw):
        if self.progress is not None:
            self.progress.update(self.bar, advance=1, description=(
                f"{self.label} task {task_id}/{self.num_tasks} epoch {epoch} "
                f"loss {logs['train_loss']:.3f} val acc {pct(logs['val_acc'])}"))

    def on_task_end(self, task_id, accuracies, loss, extras, seconds, **kw):
        if self.quiet:
            return
        accs = " ".join(pct(a) for a in accuracies)
        console.print(f"{self.label} after task {task_id}: AA {pct(float(np.mean(accuracies)))}  "
                      f"[dim]a[·,{task_id}] = {accs}  ({seconds:.1f}s)[/dim]")

    def on_unlearn(self, task_id, unlearned, logs, **kw):
        if not self.quiet:
            console.print(f"{self.label} after task {task_id}: unlearned task(s) {unlearned} "
                          f"[dim]({logs['seconds']:.2f}s)[/dim]")

    def on_run_end(self, **kw):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    on_run_failed = on_run_end


def summary(result, title: str) -> None:
    """The accuracy matrix (percent) and the headline metrics as rich tables."""
    acc = result.main.acc
    T = acc.shape[1]
    table = Table(title=f"{title}: accuracy a[t, N] (%)", show_lines=False)
    table.add_column("after N", justify="right")
    for t in range(T):
        table.add_column(f"t={t + 1}", justify="right")
    table.add_column("AA", justify="right", style="bold")
    for n in range(acc.shape[0]):
        row = acc[n]
        table.add_row(str(n + 1), *[pct(v) if np.isfinite(v) else "" for v in row], pct(float(np.nanmean(row))))
    console.print(table)
    m = result.metrics
    from clrepro.config.schema import METRICS

    shown = [k for k in METRICS if k in m]
    mt = Table(title="metrics (%)" + (" — DD: distance ×100" if "DD" in shown else ""))
    for k in shown:
        mt.add_column(k, justify="right")
    mt.add_row(*[pct(m[k]) for k in shown])
    console.print(mt)
    if "cul_details" in m:
        d = m["cul_details"]
        console.print(f"[dim]unlearned {d['unlearned']}; DD {d['distance']} over {d['dd_scope_used']} tasks "
                      f"{d['dd_tasks']} (batch {d['batch_size']}); AGR over {d['ag_scope']} tasks {d['ag_tasks']}[/dim]")
    refs = ", ".join(f"{k}: {v}" for k, v in m.get("references", {}).items()) or "none"
    console.print(f"[dim]references {refs}; FR variant {m.get('fr_variant')}; "
                  f"accuracy weighting {m.get('acc_weighting')}; main run {result.main.wall_seconds:.1f}s "
                  f"({result.main.steps} steps), total {result.wall_seconds:.1f}s[/dim]")
