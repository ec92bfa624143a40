"""Fix: learn task 1, then freeze; later tasks are not trained (docs/algorithms/fix.md, A9)."""

from __future__ import annotations

from dataclasses import dataclass

from clrepro.algorithms.base import CLAlgorithm
from clrepro.config.hparams import hp
from clrepro.registry import ALGORITHMS


@dataclass
class FixConfig:
    train_heads: bool = hp(False, doc="train new heads on a frozen backbone (linear probing, the reference "
                                      "before e6fa815); false: train nothing after task 1 (HEAD)", bug="A9")


@ALGORITHMS.register("fix")
class Fix(CLAlgorithm):
    """Task 1 trains normally; for t ≥ 2 nothing trains (or only the new head, with `train_heads`)."""

    Config = FixConfig
    lr_scheduler_live = False  # manual optimisation in the reference
    summary = "train task 1 only, then freeze (stability upper bound)"

    def should_train(self, task_id: int) -> bool:
        return task_id == 1 or self.cfg.train_heads

    def trainable_parameters(self):
        if self.task_id == 1:
            return self.parameters()
        return self.heads.heads[str(self.task_id) if self.heads.scenario != "DIL" else "shared"].parameters()

    def training_loss(self, batch, step):
        if self.task_id > 1:
            self.backbone.eval()  # frozen backbone: no BN statistics or dropout updates
        return super().training_loss(batch, step)
