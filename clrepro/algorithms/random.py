"""Random: the untrained network, the reference point of the forgetting ratio FR (docs/metrics/index.md#reference-runs)."""

from __future__ import annotations

from clrepro.algorithms.base import CLAlgorithm
from clrepro.registry import ALGORITHMS


@ALGORITHMS.register("random")
class Random(CLAlgorithm):
    """Never trains: every task is tested with the random initial backbone and a freshly initialised head."""

    lr_scheduler_live = False
    summary = "untrained network (reference for FR)"

    def should_train(self, task_id: int) -> bool:
        return False
