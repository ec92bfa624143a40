"""Listener hooks the engine emits through Fabric's callback mechanism (console, Tune, MLflow listen)."""

from __future__ import annotations

HOOKS = (
    "on_run_start",    # (name, num_tasks, seed, algorithm)
    "on_task_start",   # (task_id, num_tasks, num_batches, epochs)
    "on_epoch_end",    # (task_id, epoch, logs: dict)
    "on_task_end",     # (task_id, accuracies: list[float], loss: list[float], extras: dict, seconds: float)
    "on_unlearn",      # (task_id, unlearned: list[int], logs: dict)
    "on_run_end",      # (result: RunResult)
    "on_run_failed",   # (error: BaseException)
)


class Listener:
    """Base listener: every hook is a no-op; override the ones you need."""

    def on_run_start(self, **kw) -> None: ...

    def on_task_start(self, **kw) -> None: ...

    def on_epoch_end(self, **kw) -> None: ...

    def on_task_end(self, **kw) -> None: ...

    def on_unlearn(self, **kw) -> None: ...

    def on_run_end(self, **kw) -> None: ...

    def on_run_failed(self, **kw) -> None: ...
