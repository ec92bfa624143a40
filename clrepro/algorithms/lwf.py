"""LwF: learning without forgetting, distilling one frozen teacher per earlier task (algorithms.md §8)."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from clrepro.algorithms.base import Batch, CLAlgorithm, Step
from clrepro.config.hparams import hp
from clrepro.registry import ALGORITHMS


@dataclass
class LwFConfig:
    distillation_reg_factor: float = hp(0.1, low=0.0, low_open=True, symbol="λ",
                                        doc="weight of each earlier task's distillation term")
    distillation_reg_temperature: float = hp(2.0, low=0.0, low_open=True, symbol="T",
                                             doc="temperature of the distillation")


def lwf_distillation(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KD_T of LwF Eq. 2–3 (Li & Hoiem) as the reference computes it.

    p = softmax(z); p' = p^{1/T} / Σ_c p^{1/T}; KD_T = −mean_batch Σ_c p'_teacher,c · log(p'_student,c + 1e-5).
    """
    p_s = F.softmax(student_logits, dim=1).pow(1 / temperature)
    p_s = p_s / p_s.sum(1, keepdim=True)
    p_t = F.softmax(teacher_logits, dim=1).pow(1 / temperature)
    p_t = p_t / p_t.sum(1, keepdim=True)
    return -(p_t * torch.log(p_s + 1e-5)).sum(1).mean()


@ALGORITHMS.register("lwf")
class LwF(CLAlgorithm):
    """L = CE(f_t(x), y) + Σ_{τ<t} λ · KD_T(student_τ, teacher_τ) (LwF Eq. 2–3), summed over τ, not averaged.

    After task τ a frozen eval-mode copy of the backbone is kept as teacher_τ (DIL: of the shared head
    too), one per task, as the reference does (O(T) memory). student_τ runs the current backbone on the
    current task's x through head τ with detached weights, so the old heads get no gradient from it.
    """

    Config = LwFConfig
    update_deletion = True
    summary = "distils each earlier task's frozen model on the current task's inputs"

    def __init__(self, backbone, heads, cfg: LwFConfig, num_tasks: int) -> None:
        super().__init__(backbone, heads, cfg, num_tasks)
        self.teachers = nn.ModuleDict()       # str(τ) → frozen backbone after task τ
        self.teacher_heads = nn.ModuleDict()  # str(τ) → frozen shared head after task τ (DIL only)

    def end_task(self, task):
        key = str(task.id)
        self.teachers[key] = copy.deepcopy(self.backbone).eval().requires_grad_(False)
        if self.heads.scenario == "DIL":
            self.teacher_heads[key] = copy.deepcopy(self.heads.head(task.id)).eval().requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teachers.eval()  # teachers stay in eval mode (dropout off, BN frozen) when the engine calls train()
        self.teacher_heads.eval()
        return self

    def trainable_parameters(self):
        return [p for n, p in self.named_parameters() if not n.startswith(("teachers.", "teacher_heads."))]

    def training_loss(self, batch: Batch, step: Step) -> torch.Tensor:
        ce = F.cross_entropy(self.forward(batch.x, batch.task_id, "train", step), batch.y)
        return ce + self.stability_loss(batch, step)

    def stability_loss(self, batch: Batch, step: Step | None = None) -> torch.Tensor:
        """Σ_{τ<t} λ · KD_T(student_τ, teacher_τ) on the current batch; 0 while no earlier teacher exists."""
        cfg = self.cfg
        earlier = [k for k in self.teachers if int(k) != self.task_id]
        if not earlier:
            return batch.x.new_zeros(())
        features = self.backbone(batch.x)
        loss = batch.x.new_zeros(())
        for key in earlier:
            head = self.heads.head(int(key))
            bias = None if head.bias is None else head.bias.detach()
            student = F.linear(features, head.weight.detach(), bias)  # old head not updated by distillation
            with torch.no_grad():
                teacher_head = self.teacher_heads[key] if key in self.teacher_heads else head
                teacher = teacher_head(self.teachers[key](batch.x))
            loss = loss + cfg.distillation_reg_factor * lwf_distillation(student, teacher,
                                                                        cfg.distillation_reg_temperature)
        return loss

    def forget(self, task_ids: list[int]) -> None:
        for u in task_ids:
            for store in (self.teachers, self.teacher_heads):
                if str(u) in store:
                    del store[str(u)]
