"""HAT: hard attention to the task (Serrà et al. 2018) as the reference implements it (docs/algorithms/hat.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from clrepro.algorithms.base import Batch, CLAlgorithm, Step
from clrepro.backbones.masks import EMBEDDING_INITS, anneal_scale, parameter_wise
from clrepro.config.hparams import hp
from clrepro.registry import ALGORITHMS

# Gradient multiplier a(P) for the parameter-wise cumulative mask P.
ADJUSTMENTS: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "hat": lambda P, alpha: 1 - P,                                   # HAT Eq. 2
    "hat_const_alpha": lambda P, alpha: alpha * P + (1 - P),         # AdaHAT-paper baseline
    "hat_const_1": lambda P, alpha: torch.ones_like(P),              # no protection
    "hat_random": lambda P, alpha: torch.rand_like(P) * P + (1 - P),  # u ~ U(0,1) redrawn every step
}
REDRAWN_EVERY_STEP = frozenset({"hat_random"})

THRES_EMB, CLIPGRAD = 6.0, 10000.0  # Serrà et al.'s safeguards (B2)


@dataclass
class HATConfig:
    adjustment_mode: str = hp("hat", choices=tuple(ADJUSTMENTS), doc="gradient protection rule")
    s_max: float = hp(400.0, low=1.0, high=1e6, symbol="s_max",
                      doc="maximum gate scale (beyond 1e6 the gates are binary in float32 and s·e overflows)")
    clamp_threshold: float = hp(50.0, low=0.0, low_open=True, doc="clamp inside cosh of the compensation")
    mask_sparsity_reg_factor: float = hp(0.1, low=0.0, symbol="λ", doc="factor of the mask sparsity regulariser")
    mask_sparsity_reg_mode: str = hp("original", choices=("original",),
                                     doc="'cross' is broken in the reference (B4) and not offered")
    task_embedding_init_mode: str = hp("N01", choices=EMBEDDING_INITS, doc="task embedding re-initialisation (B5)")
    alpha: float | None = hp(None, low=0.0, doc="constant of hat_const_alpha (paper 1e-6)")
    anneal_offset_parity: bool = hp(True, doc="reproduce the reference's (batch_idx-1)/(B-1) anneal; "
                                              "false uses batch_idx/(B-1)", bug="B1")
    original_hat_safeguards: bool = hp(False, doc="clamp embeddings to ±6 after each step and clip the "
                                                  "gradient norm at 10000, as Serrà et al.'s code", bug="B2")


def free_units(used: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Units no earlier task uses (1 − M^{<t}) and their count per layer, fixed for a whole task."""
    free = {l: 1 - m for l, m in used.items()}
    return free, {l: float(f.sum()) for l, f in free.items()}


def mask_sparsity(mask: dict[str, torch.Tensor], free: dict[str, torch.Tensor], free_count: dict[str, float],
                  min_free: int = 10) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mask sparsity regulariser R and per-layer network sparsity R_l.

    R = Σ_l Σ_i m_{l,i} (1 − M^{<t}_{l,i}) / Σ_l Σ_i (1 − M^{<t}_{l,i}); each ratio is 0 when its
    denominator is ≤ `min_free` units.
    """
    per_layer, nums = {}, []
    for l, m in mask.items():
        num = (m * free[l]).sum()
        nums.append(num)
        per_layer[l] = num / free_count[l] if free_count[l] > min_free else torch.zeros_like(num)
    den = sum(free_count.values())
    total = torch.stack(nums).sum()
    return (total / den if den > min_free else torch.zeros_like(total)), per_layer


@ALGORITHMS.register("hat")
class HAT(CLAlgorithm):
    """Task-gated units; gradients to units used by earlier tasks are cut (Eq. 2) and gates annealed (Eq. 3)."""

    Config = HATConfig
    requires_masked_backbone = True
    lr_scheduler_live = False  # manual optimisation in the reference: the scheduler never steps (A11)
    summary = "hard attention to the task: per-task unit masks protect earlier tasks"

    def __init__(self, backbone, heads, cfg: HATConfig, num_tasks: int) -> None:
        super().__init__(backbone, heads, cfg, num_tasks)
        if cfg.adjustment_mode == "hat_const_alpha" and cfg.alpha is None:
            from clrepro.errors import ConfigError
            raise ConfigError("algorithm.alpha", "required by adjustment_mode=hat_const_alpha", "a number > 0")
        self.masks = backbone.hat
        self._s = cfg.s_max
        self._protected: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
        self.layer_sparsity: dict[str, torch.Tensor] = {}

    # ----- task boundaries -------------------------------------------------------------------------
    def setup_task(self, task, num_batches):
        super().setup_task(task, num_batches)
        self.masks.reset_embeddings(self.cfg.task_embedding_init_mode)
        self.used = self.masks.cumulative()  # M^{<t}
        self._capacity_steps = 0
        self._free, self._free_count = free_units(self.used)
        self.prepare_adjustment()

    def prepare_adjustment(self) -> None:
        """Parameter-wise cumulative mask P (min-aggregated) and, for static modes, the multiplier a(P)."""
        P = parameter_wise(self.backbone.masked_parameters(), self.used, "min")
        params = {mp.name: mp.param for mp in self.backbone.masked_parameters()}
        self._P = [(params[n], p.contiguous()) for n, p in P.items()]
        if self.cfg.adjustment_mode not in REDRAWN_EVERY_STEP:
            rule = ADJUSTMENTS[self.cfg.adjustment_mode]
            self._protected = [(p, rule(P_, self.cfg.alpha or 0.0)) for p, P_ in self._P]

    def end_task(self, task):
        self.masks.store(task.id)  # M^t = 1[e > 0]

    def _track_network_capacity(self, adjustment: list[tuple[torch.nn.Parameter, torch.Tensor]]) -> None:
        """The reference's network capacity: the mean adjustment rate a over every masked parameter, per step
        (the AdaHAT paper's Sec. 4.1 metric); summed on the device, read once per task."""
        total = torch.stack([a.sum() for _, a in adjustment]).sum()
        self._capacity_sum = total if self._capacity_steps == 0 else self._capacity_sum + total
        self._capacity_last = total
        self._capacity_steps += 1
        self._capacity_numel = sum(a.numel() for _, a in adjustment)

    # ----- training step ---------------------------------------------------------------------------
    def scale(self, step: Step) -> float:
        return anneal_scale(step.batch_idx, step.num_batches, self.cfg.s_max, self.cfg.anneal_offset_parity)

    def training_loss(self, batch: Batch, step: Step) -> torch.Tensor:
        self._s = self.scale(step)
        mask = self.masks.gate(self._s)
        logits = self.heads(self.backbone(batch.x, mask), batch.task_id)
        reg, self.layer_sparsity = mask_sparsity(mask, self._free, self._free_count)
        return F.cross_entropy(logits, batch.y) + self.cfg.mask_sparsity_reg_factor * reg

    def adjustment(self) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
        """(parameter, gradient multiplier a) pairs for this step."""
        if self.cfg.adjustment_mode in REDRAWN_EVERY_STEP:
            rule = ADJUSTMENTS[self.cfg.adjustment_mode]
            return [(p, rule(P, self.cfg.alpha or 0.0)) for p, P in self._P]
        return self._protected

    @torch.no_grad()
    def after_backward(self, step: Step) -> None:
        adjustment = self.adjustment()
        for p, a in adjustment:  # Eq. 2: g ← a ⊙ g
            if p.grad is not None:
                p.grad.mul_(a)
        self._track_network_capacity(adjustment)
        self.compensate_embeddings()
        if self.cfg.original_hat_safeguards:
            torch.nn.utils.clip_grad_norm_(self.trainable_parameters(), CLIPGRAD)

    @torch.no_grad()
    def compensate_embeddings(self) -> None:
        """Embedding-gradient compensation: g_e ← (s_max/s)·(cosh(clamp(s·e, ±C)) + 1)/(cosh(e) + 1) ⊙ g_e."""
        s, s_max, C = self._s, self.cfg.s_max, self.cfg.clamp_threshold
        for e in self.masks.embeddings.values():
            if e.grad is not None:
                num = torch.cosh(torch.clamp(s * e, -C, C)) + 1
                e.grad.mul_((s_max / s) * num / (torch.cosh(e) + 1))

    @torch.no_grad()
    def after_optimizer_step(self, step: Step) -> None:
        if self.cfg.original_hat_safeguards:
            for e in self.masks.embeddings.values():
                e.clamp_(-THRES_EMB, THRES_EMB)

    # ----- inference -------------------------------------------------------------------------------
    def stage_mask(self, task_id: int, stage: str, step: Step | None = None) -> dict[str, torch.Tensor]:
        """train: sigmoid(s·e) annealed; val: sigmoid(s_max·e); test: the stored binary mask of the task."""
        if stage == "train":
            return self.masks.gate(self.scale(step) if step is not None else self.cfg.s_max)
        if stage == "val" or task_id not in self.masks.task_masks:
            return self.masks.gate(self.cfg.s_max)
        return self.masks.test_mask(task_id)

    def forward(self, x, task_id, stage="test", step=None):
        return self.heads(self.backbone(x, self.stage_mask(task_id, stage, step)), task_id)

    def extra_metrics(self) -> dict[str, float]:
        """Mask capacity (per layer and overall, the fraction of units any task uses so far) and network capacity."""
        return {**mask_capacity(self.masks.cumulative()), **self.network_capacity()}

    def network_capacity(self) -> dict[str, float]:
        """The task's network capacity (mean adjustment rate over all masked parameters): its mean over the
        task's training steps and its value at the last step; empty for a task that did not train."""
        steps = getattr(self, "_capacity_steps", 0)
        if not steps:
            return {}
        n = self._capacity_numel
        return {"network_capacity": float(self._capacity_sum) / (steps * n),
                "network_capacity/end": float(self._capacity_last) / n}


def mask_capacity(used: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per layer, the fraction of units marked used, and over all layers (`mask_capacity/all`)."""
    out = {f"mask_capacity/{l}": float(m.mean()) for l, m in used.items()}
    out["mask_capacity/all"] = sum(float(m.sum()) for m in used.values()) / sum(m.numel() for m in used.values())
    return out
