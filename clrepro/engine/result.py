"""What a run returns: the accuracy and loss matrices, per-task extras, per-epoch history, timings."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class RunResult:
    """acc[N-1, t-1] = a_{t,N} (NaN above the diagonal); a multitask (joint) run has one row."""

    acc: np.ndarray
    loss: np.ndarray
    multitask: bool = False
    task_extras: list[dict] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    wall_seconds: float = 0.0
    steps: int = 0
    device: str = "cpu"

    @property
    def num_tasks(self) -> int:
        return int(self.acc.shape[1])
