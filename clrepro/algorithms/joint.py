"""Joint: one multi-task model trained on all tasks at once, the upper reference of FR (docs/metrics/index.md#reference-runs)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clrepro.algorithms.base import Batch, CLAlgorithm, Step
from clrepro.registry import ALGORITHMS


@ALGORITHMS.register("joint")
class Joint(CLAlgorithm):
    """Shared backbone, one head per task, trained on the shuffled union of every task's training set.

    The loss groups each mini-batch by task: L = mean over the tasks k present of CE_k on k's own slice
    (docs/metrics/index.md#reference-runs), so tasks with different class counts train correctly.
    """

    multitask = True
    scenarios = ("TIL",)
    summary = "multi-task learning on all tasks at once (reference for FR)"

    def training_loss(self, batch: Batch, step: Step) -> torch.Tensor:
        features = self.backbone(batch.x)
        losses = [F.cross_entropy(logits, batch.y[idx])
                  for idx, logits in self.heads.forward_per_sample(features, batch.task_id)]
        return torch.stack(losses).mean()
