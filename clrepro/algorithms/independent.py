"""Independent: a fresh copy of the same initial network per task (the FWT reference, docs/metrics/index.md#reference-runs)."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from clrepro.algorithms.base import CLAlgorithm
from clrepro.config.hparams import hp
from clrepro.registry import ALGORITHMS


@dataclass
class IndependentConfig:
    stored_copies_train_mode: bool = hp(True, bug="reference Independent", doc=(
        "reproduce the reference, which keeps each task's network copy in a plain dict that model.eval() never "
        "reaches: with BatchNorm the copies are tested in training mode, on each test batch's own statistics "
        "(this moves FWT); false: tested in eval mode on their running statistics. No effect without BatchNorm"))



@ALGORITHMS.register("independent")
class Independent(CLAlgorithm):
    """Each task restarts from the same θ_0 and keeps its own backbone copy for testing."""

    Config = IndependentConfig
    summary = "one network per task, each from the same initialisation (reference for FWT); unlearns exactly"
    supports_unlearning = True  # UnlearnableIndependent (AmnesiacHAT paper baseline, docs/unlearning.md): exact unlearning

    def __init__(self, backbone, heads, cfg, num_tasks):
        super().__init__(backbone, heads, cfg, num_tasks)
        self.initial_state = copy.deepcopy(backbone.state_dict())
        self.task_backbones = nn.ModuleDict()

    def setup_task(self, task, num_batches):
        super().setup_task(task, num_batches)
        self.backbone.load_state_dict(self.initial_state)  # θ ← θ_0

    def trainable_parameters(self):
        return [p for n, p in self.named_parameters() if not n.startswith("task_backbones.")]

    def end_task(self, task):
        frozen = copy.deepcopy(self.backbone).requires_grad_(False)
        self.task_backbones[str(task.id)] = frozen

    def unlearn(self, task_ids):
        """Exact unlearning: task u's network goes back to θ_0, its head is re-initialised, u leaves the valid set."""
        for u in task_ids:
            if str(u) in self.task_backbones:
                self.task_backbones[str(u)].load_state_dict(self.initial_state)
                del self.task_backbones[str(u)]
            if self.heads.scenario == "TIL" and str(u) in self.heads.heads:
                self.heads.head(u).reset_parameters()

    def features(self, x):
        """φ averages the backbones still valid, so unlearned tasks' networks are excluded (docs/unlearning.md)."""
        valid = list(self.task_backbones.values())
        if not valid:
            return self.backbone(x)
        return torch.stack([b(x) for b in valid]).mean(0)

    def forward(self, x, task_id, stage="test", step=None):
        if stage == "test" and str(task_id) in self.task_backbones:
            return self.heads(self._stored(self.task_backbones[str(task_id)], x), task_id)
        if stage == "test" and task_id in self.unlearned_ids:  # an unlearned task's network is θ_0
            return self.heads(self.initial_backbone(x), task_id)
        return self.heads(self.backbone(x), task_id)

    def _stored(self, backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """A stored copy's features; in training mode per test batch when reproducing the reference with BN."""
        if not (self.cfg.stored_copies_train_mode and self.training is False
                and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in backbone.modules())):
            return backbone(x)
        backbone.train()
        try:
            return torch.cat([backbone(c) for c in x.split(self.eval_batch_size)])
        finally:
            backbone.eval()

    def initial_backbone(self, x):
        b = copy.deepcopy(self.backbone)
        b.load_state_dict(self.initial_state)
        return b(x)

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        self.initial_state = {k: fn(v) for k, v in self.initial_state.items()}
        return out
