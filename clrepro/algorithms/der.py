"""DER and DER++: dark experience replay of stored logits (and labels) from a reservoir buffer (algorithms.md §5)."""

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


@dataclass
class DERppConfig(DERConfig):
    distillation_reg_factor: float = hp(0.5, low=0.0, symbol="alpha_D", doc="weight of the logit replay (MSE) term")
    replay_ce_factor: float = hp(0.5, low=0.0, symbol="beta", doc="weight of the label replay (CE) term")


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
    """

    Config = DERConfig
    update_deletion = True
    summary = "dark experience replay: MSE to logits stored in a reservoir buffer"
    student_stage: ClassVar[str] = "test"

    def __init__(self, backbone, heads, cfg: DERConfig, num_tasks: int) -> None:
        super().__init__(backbone, heads, cfg, num_tasks)
        self.buffer = ReservoirBuffer(cfg.buffer_size)
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
        self._pending = (batch.x, batch.y, logits.detach(), batch.task_id)

    def replay_batch(self, size: int) -> Replay | None:
        """Up to `size` entries drawn with replacement from the earlier tasks' entries; None if there are none."""
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
