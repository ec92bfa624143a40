"""DER and DER++: dark experience replay of stored logits (and labels) from a reservoir buffer (docs/algorithms/der.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from clrepro.algorithms.base import Batch, CLAlgorithm, Step
from clrepro.algorithms.buffer import Replay, ReservoirBuffer
from clrepro.config.hparams import hp
from clrepro.registry import ALGORITHMS


@dataclass
class DERConfig:
    buffer_size: int = hp(200, low=1, symbol="K", doc="reservoir capacity (examples over all tasks)")
    distillation_reg_factor: float = hp(1.0, low=0.0, symbol="alpha_D", doc="weight of the logit replay (MSE) term")
    paper_variants: bool = hp(False, doc="DER paper instead of the reference: MSE summed over logit dims, and "
                                         "DER++ draws a second independent replay batch for its CE term", bug="A5")
    buffer_policy: str = hp("reservoir", choices=("reservoir", "class_balanced_task_end"),
                            doc="reservoir: every training batch is offered to a reservoir with this step's logits, "
                                "replay drawn with replacement (reference); class_balanced_task_end: after each task "
                                "its whole training set joins the buffer with logits of one eval-mode pass, K split "
                                "evenly over the classes seen, each class a uniform random subset of its examples so "
                                "far, replayed in reshuffled passes without replacement once it holds a full batch "
                                "(Avalanche's DER)")


@dataclass
class DERppConfig(DERConfig):
    distillation_reg_factor: float = hp(0.5, low=0.0, symbol="alpha_D", doc="weight of the logit replay (MSE) term")
    replay_ce_factor: float = hp(0.5, low=0.0, symbol="beta", doc="weight of the label replay (CE) term")


class ClassBalancedTaskEndBuffer:
    """The `class_balanced_task_end` memory: filled only at task ends, class-balanced, replayed without replacement.

    Each example carries a U(0, 1) key drawn when it is offered; class c keeps the K_c examples with the largest
    keys among all of its examples offered so far (a uniform random subset), K_c = K // C plus one for the first
    K mod C classes in ascending class order, C the number of classes seen. Replay batches are consecutive
    slices of a random permutation of the buffer; a slice shorter than the batch is skipped and a new
    permutation drawn (a shuffled, drop_last loader cycled); none while the buffer holds less than a batch.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = int(capacity)
        self.x = self.y = self.logits = self.task_id = self.key = None
        self.transform = None  # the run's train-time augmentation, applied to what `sample` hands out
        self._perm: torch.Tensor | None = None
        self._pos = 0

    def __len__(self) -> int:
        return 0 if self.y is None else len(self.y)

    @torch.no_grad()
    def add_task(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor, task_id: int) -> None:
        key = torch.rand(len(y)).to(x.device)
        tid = torch.full((len(y),), int(task_id), dtype=torch.long, device=x.device)
        if self.y is not None:
            width = max(logits.shape[1], self.logits.shape[1])
            pad = lambda z: F.pad(z, (0, width - z.shape[1]))  # noqa: E731
            x, y, tid = torch.cat([x, self.x]), torch.cat([y, self.y]), torch.cat([tid, self.task_id])
            logits, key = torch.cat([pad(logits), pad(self.logits)]), torch.cat([key, self.key])
        classes = torch.unique(y).tolist()
        base, extra = divmod(self.capacity, len(classes))
        keep = []
        for i, c in enumerate(classes):
            idx = (y == c).nonzero(as_tuple=True)[0]
            order = key[idx].argsort(descending=True)
            keep.append(idx[order[: base + (i < extra)]])
        keep = torch.cat(keep)
        self.x, self.y, self.logits, self.task_id, self.key = x[keep], y[keep], logits[keep], tid[keep], key[keep]
        self._perm = None

    def restart(self) -> None:
        """A new replay loader (Avalanche builds one per task): the next batch starts a fresh permutation."""
        self._perm = None

    def sample(self, size: int) -> Replay | None:
        n = len(self)
        if n < size or size <= 0:
            return None
        if self._perm is None or self._pos + size > n:
            self._perm, self._pos = torch.randperm(n).to(self.y.device), 0
        pick = self._perm[self._pos:self._pos + size]
        self._pos += size
        return self.replay(pick)

    def replay(self, pick: torch.Tensor) -> Replay:
        """The entries at `pick`, their inputs through `transform` when there is one."""
        x, tid = self.x[pick], self.task_id[pick]
        return Replay(x if self.transform is None else self.transform(x, tid), self.y[pick], self.logits[pick], tid,
                      pick)

    @torch.no_grad()
    def delete_task(self, task_id: int) -> None:
        if self.y is not None:
            keep = (self.task_id != task_id).nonzero(as_tuple=True)[0]
            self.x, self.y, self.logits, self.task_id, self.key = (
                t[keep] for t in (self.x, self.y, self.logits, self.task_id, self.key))
            self._perm = None

    def apply(self, fn) -> "ClassBalancedTaskEndBuffer":
        for name in ("x", "y", "logits", "task_id", "key"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, fn(t))
        self._perm = None
        return self


@ALGORITHMS.register("der")
class DER(CLAlgorithm):
    """L = CE(f_t(x), y) + alpha_D · MSE(f_{τ_r}(x_r), z_r) (the DER objective), (x_r, z_r, τ_r) from earlier tasks.

    The replay batch has the current batch size (at most the number of earlier-task entries, as the
    reference's `get_data`) and is drawn with replacement from the buffer's earlier-task entries; there is
    none in task 1. Each replayed sample goes through its own task's head and the stored logits are
    compared over the width they had when stored (TIL: head τ; CIL: the concatenation at that time; DIL:
    the shared head). After the step the current batch enters the buffer with this step's logits.

    Student stage (A5): DER runs the replay forward in "test" stage, here the backbone in eval mode
    (dropout off, BN on running statistics); DER++ in "train" stage. This matters only with dropout or BN.

    `buffer_policy=class_balanced_task_end` replaces the reservoir by ClassBalancedTaskEndBuffer: nothing is
    stored during training; after each task its training set and its eval-mode logits are offered at once.
    """

    Config = DERConfig
    update_deletion = True
    summary = "dark experience replay: MSE to logits stored in a reservoir buffer"
    student_stage: ClassVar[str] = "test"

    @classmethod
    def memory_bytes(cls, cfg, input_shape):
        return {"algorithm.buffer_size": ReservoirBuffer.bytes_for(cfg.buffer_size, input_shape)}

    def __init__(self, backbone, heads, cfg: DERConfig, num_tasks: int) -> None:
        super().__init__(backbone, heads, cfg, num_tasks)
        self.task_end = cfg.buffer_policy == "class_balanced_task_end"
        self.buffer = ClassBalancedTaskEndBuffer(cfg.buffer_size) if self.task_end else ReservoirBuffer(cfg.buffer_size)
        self._pending: tuple | None = None
        self._width_of = torch.zeros(0, dtype=torch.long)  # task → width of the logits stored for it

    def setup_task(self, task, num_batches):
        super().setup_task(task, num_batches)
        # Task k's logits were f(x, k) while k was trained: its head (TIL), the shared head (DIL), or the
        # concatenation of heads 1..k (CIL).
        widths = torch.zeros(max(self.seen_tasks) + 1, dtype=torch.long)
        for k in self.seen_tasks:
            widths[k] = self.heads.label_offset(k) + self.heads.head(k).out_features
        self._width_of = widths.to(self._width_of.device)
        if self.task_end:
            self.buffer.restart()

    @torch.no_grad()
    def end_task(self, task):
        """class_balanced_task_end: the task's training set joins the buffer with one eval-mode pass's logits."""
        super().end_task(task)
        if not self.task_end:
            return
        was_training = self.training
        self.eval()
        try:
            x = task.train.x
            y = task.train.y + self.heads.label_offset(task.id)
            bs = 4096
            logits = torch.cat([self.forward(x[i:i + bs], task.id, "test") for i in range(0, len(x), bs)])
        finally:
            self.train(was_training)
        self.buffer.add_task(x, y, logits.detach(), task.id)

    # ----- training step ---------------------------------------------------------------------------
    def training_loss(self, batch: Batch, step: Step) -> torch.Tensor:
        logits = self.forward(batch.x, batch.task_id, "train", step)
        self.remember(batch, logits)
        return F.cross_entropy(logits, batch.y) + self.stability_loss(batch, step)

    def stability_loss(self, batch: Batch, step: Step | None = None) -> torch.Tensor:
        """The replay terms on a batch from earlier tasks (DER: alpha_D·MSE; DER++ adds beta·CE); 0 in task 1."""
        replay = self.replay_batch(len(batch.y))
        if replay is None:
            return batch.x.new_zeros(())
        logits = self.replay_logits(replay, self.student_stage)
        return self.cfg.distillation_reg_factor * self.logit_distance(logits, replay) + self.replay_ce(logits, replay)

    def replay_ce(self, logits: list[tuple[torch.Tensor, torch.Tensor]], replay: Replay) -> torch.Tensor:
        """The label replay term (DER++ only); DER has none."""
        return replay.x.new_zeros(())

    def after_optimizer_step(self, step: Step) -> None:
        if self._pending is not None:
            self.buffer.add(*self._pending)
            self._pending = None

    # ----- pieces ------------------------------------------------------------------------------------
    def remember(self, batch: Batch, logits: torch.Tensor) -> None:
        """Queue the current batch and its logits (detached) for the buffer, added after the optimizer step."""
        if not self.task_end:  # class_balanced_task_end stores at the task's end instead
            self._pending = (batch.unaugmented, batch.y, logits.detach(), batch.task_id)  # inputs unaugmented

    def replay_batch(self, size: int) -> Replay | None:
        """Up to `size` entries drawn with replacement from the earlier tasks' entries; None if there are none.

        class_balanced_task_end: the next `size` entries of the buffer's current pass (it holds earlier tasks only).
        """
        if self.task_end:
            return self.buffer.sample(size)
        earlier = [k for k in self.seen_tasks if k != self.task_id]
        return self.buffer.sample(size, earlier) if earlier else None

    def replay_logits(self, replay: Replay, stage: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """[(sample indices, logits through their task's head)] from the current model in `stage` (A5)."""
        was_training = self.backbone.training
        if stage == "test":
            self.backbone.eval()
        try:
            features = self.backbone(replay.x)
        finally:
            self.backbone.train(was_training)
        return self.heads.forward_per_sample(features, replay.task_id)

    def logit_distance(self, logits: list[tuple[torch.Tensor, torch.Tensor]], replay: Replay) -> torch.Tensor:
        """MSE(f_{τ_r}(x_r), z_r) over each sample's stored width: mean over logits (reference) or sum (A5), then
        mean over the batch; with equal widths the reference form is exactly F.mse_loss."""
        z = replay.logits
        n, W = z.shape
        student = z.new_zeros(n, W)
        for idx, out in logits:
            c = min(out.shape[1], W)
            student = student.index_put((idx,), F.pad(out[:, :c].to(z.dtype), (0, W - c)))
        width = self._width_of[replay.task_id]  # stored width of each sample
        valid = torch.arange(W, device=z.device)[None, :] < width[:, None]
        per_sample = ((student - z) ** 2 * valid).sum(1)
        if not self.cfg.paper_variants:
            per_sample = per_sample / width
        return per_sample.mean()

    def forget(self, task_ids: list[int]) -> None:
        for u in task_ids:
            self.buffer.delete_task(u)

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        self.buffer.apply(fn)  # the buffer follows the module's device
        self._width_of = fn(self._width_of)
        return out


@ALGORITHMS.register("derpp")
class DERpp(DER):
    """DER++: DER plus beta · CE(f_{τ_r}(x_r), y_r) (the DER++ objective) on the same replay batch (reference, A5).

    With `paper_variants` the CE term uses a second, independent replay batch as in the DER paper.
    """

    Config = DERppConfig
    summary = "DER plus cross-entropy on replayed labels"
    student_stage: ClassVar[str] = "train"

    def replay_ce(self, logits: list[tuple[torch.Tensor, torch.Tensor]], replay: Replay) -> torch.Tensor:
        if self.cfg.paper_variants:
            replay = self.replay_batch(len(replay.y))
            logits = self.replay_logits(replay, self.student_stage)
        ce_sum = sum(F.cross_entropy(out, replay.y[idx], reduction="sum") for idx, out in logits)
        return self.cfg.replay_ce_factor * ce_sum / len(replay.y)
