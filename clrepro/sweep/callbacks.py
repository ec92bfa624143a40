"""rich live progress of a sweep as a Tune callback: trials done, running, failed, best value so far."""

from __future__ import annotations

import math

from ray.tune import Callback


class SweepProgress(Callback):
    """Counts trials and shows the best objective; picklable (Tune stores callbacks with the sweep)."""

    def __init__(self, total: int, metric: str, mode: str) -> None:
        self.total, self.metric, self.mode = total, metric, mode
        self._reset()

    def _reset(self) -> None:
        self.running: set[str] = set()
        self.done, self.failed = 0, 0
        self.best: float | None = None
        self.best_trial = ""
        self._live = None

    def __getstate__(self):
        return {"total": self.total, "metric": self.metric, "mode": self.mode}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._reset()

    def _render(self):
        from rich.text import Text

        best = "—" if self.best is None else f"{100 * self.best:.2f}% ({self.best_trial})"
        return Text.from_markup(
            f"[bold]sweep[/bold] trials: {self.done} done, {len(self.running)} running, "
            f"[red]{self.failed} failed[/red] of {self.total}   best {self.metric}: {best}")

    def _refresh(self) -> None:
        if self._live is None:
            from rich.live import Live

            from clrepro.console import console

            self._live = Live(self._render(), console=console, refresh_per_second=4, transient=False)
            self._live.start()
        self._live.update(self._render())

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running.add(trial.trial_id)
        self._refresh()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.running.discard(trial.trial_id)
        result = trial.last_result or {}
        if result.get("failed"):  # the trial's own error (it is not a Tune error, so it is not retried)
            self.failed += 1
            self._refresh()
            return
        self.done += 1
        value = result.get("objective")
        search_done = not result.get("final") and not result.get("partial", True)  # final-group seeds don't rank
        if search_done and value is not None and math.isfinite(value):
            better = self.best is None or (value > self.best if self.mode == "max" else value < self.best)
            if better:
                self.best, self.best_trial = value, trial.trial_id
        self._refresh()

    def on_trial_error(self, iteration, trials, trial, **info):
        self.running.discard(trial.trial_id)
        self.failed += 1
        self._refresh()

    def on_experiment_end(self, trials, **info):
        if self._live is not None:
            self._live.stop()
            self._live = None
