"""LwF: learning without forgetting, distilling one frozen teacher per earlier task (docs/algorithms/lwf.md)."""

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
    teachers: str = hp("per_task", choices=("per_task", "latest"),
                       doc="per_task: a frozen copy after each task τ distils head τ (reference, O(T) memory); "
                           "latest: one frozen copy of the whole model after the latest task distils every earlier "
                           "head, each distinct head once (Li & Hoiem's θ_o, Avalanche's LwF)")
    train_old_heads: bool = hp(False, doc="let the distillation's gradient reach the earlier heads (Li & Hoiem jointly "
                                          "optimise θ_o; Avalanche); false: they are detached (reference)")
    student_no_grad: bool = hp(True, bug="reference LwF", doc=(
        "reproduce the reference's LwF step, which computes the student logits under torch.no_grad: the distillation "
        "term is in the loss value but sends no gradient, so LwF trains as Finetuning (each earlier task's student "
        "forward still updates BatchNorm statistics); false: the student's gradient trains the backbone (Li & Hoiem; "
        "the reference's own unlearnable LwF; Avalanche)"))
    log_epsilon: float = hp(1e-5, low=0.0, symbol="ε",
                            doc="KD_T's log(p'_student + ε) (reference 1e-5); 0: the exact log-softmax (a KL's "
                                "gradient, as Avalanche's kl_div)")


def lwf_distillation(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                     log_epsilon: float = 1e-5) -> torch.Tensor:
    """KD_T of LwF Eq. 2–3 (Li & Hoiem) as the reference computes it.

    p = softmax(z); p' = p^{1/T} / Σ_c p^{1/T}; KD_T = −mean_batch Σ_c p'_teacher,c · log(p'_student,c + ε),
    ε = 1e-5. With ε = 0 the log is log_softmax(z_student / T) (p' = softmax(z / T)), which has KL(p'_t ‖ p'_s)'s
    gradient.
    """
    p_t = F.softmax(teacher_logits, dim=1).pow(1 / temperature)
    p_t = p_t / p_t.sum(1, keepdim=True)
    if log_epsilon == 0:
        return -(p_t * F.log_softmax(student_logits / temperature, dim=1)).sum(1).mean()
    p_s = F.softmax(student_logits, dim=1).pow(1 / temperature)
    p_s = p_s / p_s.sum(1, keepdim=True)
    return -(p_t * torch.log(p_s + log_epsilon)).sum(1).mean()


@ALGORITHMS.register("lwf")
class LwF(CLAlgorithm):
    """L = CE(f_t(x), y) + Σ_{τ<t} λ · KD_T(student_τ, teacher_τ) (LwF Eq. 2–3), summed over τ, not averaged.

    After task τ a frozen eval-mode copy of the backbone is kept as teacher_τ (DIL: of the shared head
    too), one per task, as the reference does (O(T) memory). student_τ runs the current backbone on the
    current task's x through head τ with detached weights, so the old heads get no gradient from it.
    By default the student runs under no_grad, as in the reference's LwF (`student_no_grad`), so the term
    adds no gradient; `student_no_grad=false` is LwF as Li & Hoiem define it.
    `teachers=latest` keeps only the model after the latest task (backbone and all heads) and distils each
    distinct earlier head from it; `train_old_heads` lets the old heads learn from the distillation.
    """

    Config = LwFConfig
    update_deletion = True
    summary = "distils each earlier task's frozen model on the current task's inputs"

    def __init__(self, backbone, heads, cfg: LwFConfig, num_tasks: int) -> None:
        super().__init__(backbone, heads, cfg, num_tasks)
        self.teachers = nn.ModuleDict()       # str(τ) → frozen backbone after task τ
        self.teacher_heads = nn.ModuleDict()  # str(τ) → frozen shared head after task τ (DIL only)

    def end_task(self, task):
        if self.cfg.teachers == "latest":  # one previous model: its backbone and all its heads
            self.teachers["latest"] = copy.deepcopy(self.backbone).eval().requires_grad_(False)
            self.teacher_heads["latest"] = copy.deepcopy(self.heads).eval().requires_grad_(False)
            return
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
        if cfg.teachers == "latest":
            return self._latest_teacher_loss(batch)
        earlier = [k for k in self.teachers if int(k) != self.task_id]
        if not earlier:
            return batch.x.new_zeros(())
        features = None if cfg.student_no_grad else self.backbone(batch.x)
        loss = batch.x.new_zeros(())
        for key in earlier:
            head = self.heads.head(int(key))
            if cfg.student_no_grad:  # the reference: one train-mode backbone forward per earlier task, no gradient
                with torch.no_grad():
                    student = head(self.backbone(batch.x))
            else:
                student = self._student(features, head)
            with torch.no_grad():
                teacher_head = self.teacher_heads[key] if key in self.teacher_heads else head
                teacher = teacher_head(self.teachers[key](batch.x))
            loss = loss + cfg.distillation_reg_factor * lwf_distillation(student, teacher,
                                                                        cfg.distillation_reg_temperature,
                                                                        cfg.log_epsilon)
        return loss

    def _student(self, features: torch.Tensor, head: nn.Linear) -> torch.Tensor:
        """Head τ on the current features; its weights detached unless `train_old_heads`."""
        if self.cfg.train_old_heads:
            return head(features)
        bias = None if head.bias is None else head.bias.detach()
        return F.linear(features, head.weight.detach(), bias)  # old head not updated by distillation

    def _latest_teacher_loss(self, batch: Batch) -> torch.Tensor:
        """Σ over the distinct heads of earlier tasks of λ·KD_T(current model, model after the latest task)."""
        cfg = self.cfg
        if "latest" not in self.teachers:
            return batch.x.new_zeros(())
        heads, seen = [], set()  # DIL: the one shared head, distilled once
        for tau in self.seen_tasks:
            head = self.heads.head(tau)
            if tau != self.task_id and id(head) not in seen and tau in self.teacher_heads["latest"].offsets:
                seen.add(id(head))
                heads.append(tau)
        if not heads:
            return batch.x.new_zeros(())
        with torch.set_grad_enabled(not cfg.student_no_grad):
            features = self.backbone(batch.x)
        with torch.no_grad():
            teacher_features = self.teachers["latest"](batch.x)
        loss = batch.x.new_zeros(())
        for tau in heads:
            with torch.set_grad_enabled(not cfg.student_no_grad):
                student = self._student(features, self.heads.head(tau))
            with torch.no_grad():
                teacher = self.teacher_heads["latest"].head(tau)(teacher_features)
            loss = loss + cfg.distillation_reg_factor * lwf_distillation(student, teacher,
                                                                        cfg.distillation_reg_temperature,
                                                                        cfg.log_epsilon)
        return loss

    def forget(self, task_ids: list[int]) -> None:
        """Drop teacher u (per_task; the latest teacher mixes every task and is kept)."""
        for u in task_ids:
            for store in (self.teachers, self.teacher_heads):
                if str(u) in store:
                    del store[str(u)]
