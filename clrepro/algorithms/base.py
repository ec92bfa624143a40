"""The algorithm interface: the hook points the engine calls; the engine never looks further inside."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from clrepro.backbones.base import Backbone
from clrepro.backbones.heads import SCENARIOS, Heads
from clrepro.data.task import Task


@dataclass(frozen=True)
class Step:
    """Where a training step sits: task, epoch, 0-based batch index within the epoch, batches per epoch."""

    task_id: int
    epoch: int
    batch_idx: int
    num_batches: int
    global_step: int


@dataclass
class Batch:
    """A training batch: inputs, scenario targets, and its task id (an int, or per-sample ids for joint).

    With train-time augmentation (`benchmark.augmentation`), `x` is the augmented batch the model trains on and
    `raw_x` the inputs as the task holds them, which is what a replay buffer stores (`unaugmented`).
    """

    x: torch.Tensor
    y: torch.Tensor
    task_id: int | torch.Tensor
    raw_x: torch.Tensor | None = None

    @property
    def unaugmented(self) -> torch.Tensor:
        """The inputs before augmentation (`x` itself when there is none)."""
        return self.x if self.raw_x is None else self.raw_x


@dataclass
class NoHyperparameters:
    """An algorithm without hyperparameters."""


class CLAlgorithm(nn.Module):
    """Base class: holds the backbone and heads and answers the engine's hooks.

    Hooks, in the order the engine calls them for task t:
      setup_task(task, num_batches) → [per step: training_loss → backward → after_backward →
      optimizer step → after_optimizer_step] → end_task(task) → forward(x, t, "test") on tasks 1..t.
    Subclasses declare `Config` (a dataclass of hyperparameters built with `hp`).
    """

    Config: ClassVar[type] = NoHyperparameters
    scenarios: ClassVar[tuple[str, ...]] = SCENARIOS
    requires_masked_backbone: ClassVar[bool] = False
    # The reference steps ReduceLROnPlateau only for algorithms with automatic optimisation (docs/algorithms/index.md, A11).
    lr_scheduler_live: ClassVar[bool] = True
    # A multitask algorithm (Joint) trains once on all tasks together instead of task by task.
    multitask: ClassVar[bool] = False
    summary: ClassVar[str] = ""
    eval_batch_size: int = 128  # the test batch size (set by the engine); test-time behaviour that depends on batches
    augmentation = None  # the run's train-time augmentation (set by the engine through set_augmentation), or None

    @classmethod
    def check_config(cls, cfg, backbone_cls: type) -> None:
        """Cross-field checks at config time (raise ConfigError): a needed backbone, incompatible options."""

    @classmethod
    def memory_bytes(cls, cfg, input_shape: tuple[int, ...]) -> dict[str, int]:
        """Memory the algorithm allocates beyond the model's training state, by the key that sizes it (a
        replay buffer's capacity); checked against the device's memory before anything is allocated."""
        return {}

    @classmethod
    def check_trainer(cls, cfg, trainer) -> None:
        """Checks against the training budget (`trainer.epochs`, `trainer.iterations`) at config time."""

    def __init__(self, backbone: Backbone, heads: Heads, cfg, num_tasks: int) -> None:
        super().__init__()
        self.backbone, self.heads, self.cfg, self.num_tasks = backbone, heads, cfg, num_tasks
        self.task_id = 0
        self.seen_tasks: list[int] = []
        self.unlearnable_ids, self.unlearned_ids = [], []
        self.update_records = None  # UpdateRecords in an unlearning run of an update-deletion algorithm

    def set_augmentation(self, augment) -> None:
        """The run's train-time augmentation `augment(x, task_id)`, set by the engine when the benchmark has one.

        The engine augments every training batch itself; here the replay buffer (`buffer`) of this algorithm and
        of any algorithm inside it (Flashback's host) gets it too, so buffers keep inputs unaugmented and augment
        them each time they hand them out for training, as DER does.
        """
        for module in self.modules():
            if isinstance(module, CLAlgorithm):
                module.augmentation = augment
                buffer = getattr(module, "buffer", None)
                if buffer is not None and hasattr(buffer, "transform"):
                    buffer.transform = augment

    # ----- task boundaries -------------------------------------------------------------------------
    def setup_task(self, task: Task, num_batches: int) -> None:
        """Before fitting task t: create its head and remember it."""
        self.task_id = task.id
        self.heads.add_task(task.id, task.num_classes)
        if task.id not in self.seen_tasks:
            self.seen_tasks.append(task.id)

    def should_train(self, task_id: int) -> bool:
        """Whether the engine runs the training loop for this task (Fix and Random say no)."""
        return True

    def phases(self, task_id: int, epochs: int) -> list[tuple[str, int]]:
        """The training phases of a task as (name, epochs); each gets a fresh optimizer (Flashback: two)."""
        return [("train", epochs)]

    def start_phase(self, name: str) -> None:
        """Before a phase's fit starts (reset to an old model, swap the loss...)."""

    def end_task(self, task: Task) -> None:
        """After fitting task t (masks, Fisher, snapshots...)."""

    # ----- training step ---------------------------------------------------------------------------
    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        """What the fresh per-task optimizer receives: all parameters, as the reference does."""
        return self.parameters()

    def training_loss(self, batch: Batch, step: Step) -> torch.Tensor:
        """The loss of one training step (default: cross-entropy of the current task)."""
        return F.cross_entropy(self.forward(batch.x, batch.task_id, "train", step), batch.y)

    def after_backward(self, step: Step) -> None:
        """Gradient surgery between backward and the optimizer step (HAT's compensation, clipping)."""

    def after_optimizer_step(self, step: Step) -> None:
        """Bookkeeping after the optimizer step (importance accumulation, buffers, clamps)."""

    # ----- inference -------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, task_id: int, stage: str = "test", step: Step | None = None) -> torch.Tensor:
        """Logits of `x` for task `task_id`; stage is train, val or test."""
        return self.heads(self.backbone(x), task_id)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The aggregated backbone feature φ(x) the CUL metric DD compares (docs/unlearning.md).

        φ averages the backbone output over the processed tasks; for a plain backbone every term is the
        same, and HAT-family backbones use all-ones masks at this stage, so both reduce to the unmasked output.
        """
        return self.backbone(x)

    def validation_loss(self, x: torch.Tensor, y: torch.Tensor, task_id: int) -> torch.Tensor:
        return F.cross_entropy(self.forward(x, task_id, "val"), y)

    # ----- continual unlearning (docs/unlearning.md) -------------------------------------------------------
    # A native unlearner (AmnesiacHAT, Independent) overrides `unlearn`. An algorithm that sets
    # `update_deletion = True` is unlearned generically (the AmnesiacHAT paper's baselines, docs/unlearning.md): the engine
    # records each task's update Δθ^t of every parameter and buffer, `unlearn` subtracts Δθ^u and then calls
    # `forget(u)` so the algorithm drops what it keeps per task (teacher, Fisher, snapshot, buffer entries).
    supports_unlearning: ClassVar[bool] = False
    update_deletion: ClassVar[bool] = False
    # Filled by the engine in an unlearning run before `setup_task(t)`: the tasks still unlearnable at t
    # (t itself included) and those unlearned so far.
    unlearnable_ids: list[int]
    unlearned_ids: list[int]

    def enable_unlearning(self) -> None:
        """Called once by the engine in an unlearning run, before task 1 (update-deletion: start recording)."""
        if self.update_deletion:
            from clrepro.algorithms.records import UpdateRecords
            self.update_records = UpdateRecords({"backbone": self.backbone, "heads": self.heads})

    @classmethod
    def can_unlearn(cls) -> bool:
        return cls.supports_unlearning or cls.update_deletion

    def unlearn(self, task_ids: list[int]) -> None:
        """Forget `task_ids` on request (called after task N's fit, before its test; docs/unlearning.md).

        Default (update deletion, docs/unlearning.md baselines): θ ← θ − Σ_u Δθ^u over backbone and heads, then `forget`.
        """
        if self.update_records is None:
            raise NotImplementedError(f"{type(self).__name__} does not support unlearning")
        self.update_records.delete(task_ids)
        self.forget(task_ids)

    def forget(self, task_ids: list[int]) -> None:
        """Drop the state this algorithm keeps for `task_ids` (teacher, Fisher, buffer entries...)."""

    def extra_metrics(self) -> dict[str, float]:
        """Scalars the algorithm wants recorded after each task (e.g. mask capacity)."""
        return {}
