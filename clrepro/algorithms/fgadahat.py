"""FG-AdaHAT: fine-grained neuron importance guided AdaHAT (docs/algorithms/fgadahat.md)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from clrepro.algorithms import importance as imp
from clrepro.algorithms.adahat import AdaHAT, AdaHATConfig
from clrepro.algorithms.base import Batch, Step
from clrepro.backbones.masks import AGGREGATIONS, parameter_wise
from clrepro.config.hparams import hp
from clrepro.registry import ALGORITHMS

# Importance scheduler c: per layer from the step's R_l; the summative variant is parameter-wise.
SCHEDULERS = {
    "linear_sparsity_reg": lambda t, R, b_L, b_R, S: (t + b_L) * (R + b_R),   # paper
    "sparsity_reg": lambda t, R, b_L, b_R, S: R + b_R,                          # ablation case 1
    "summative_mask_sparsity_reg": lambda t, R, b_L, b_R, S: (S + b_L) * (R + b_R),  # B6: the intended formula
}
# How the task's importance I^t folds into the summative importance S_I = I^{<t+1}.
SUMMING = {
    "add_latest": lambda history: history[-1],                          # S_I += I^t
    "add_all": lambda history: sum(history),                            # S_I += Σ_{τ≤t} I^τ (paper, A3)
    "add_average": lambda history: sum(history) / len(history),         # S_I += (Σ_{τ≤t} I^τ) / t
}


@dataclass
class FGAdaHATConfig(AdaHATConfig):
    adjustment_mode: str = hp("fgadahat", choices=("fgadahat",), doc="FG-AdaHAT's own rule")
    adjustment_intensity: float = hp(1.5e-7, low=0.0, low_open=True, symbol="alpha",
                                     doc="paper: 1.5e-7 (IG, ICU, CU, AFI, II, FA), 1e-7 (OG, GS, DL)")
    base_linear: float = hp(5.0, low=0.0, symbol="b_L", doc="paper 5 (10 for OG, GS, DL); ablation case 2: 0")
    base_mask_sparsity_reg: float = hp(0.1, low=0.0, symbol="b_R")
    base_importance: float = hp(1e-8, low=0.0, symbol="b_I")
    importance_type: str = hp("IG", choices=imp.MEASURES, doc="neuron-importance measure")
    importance_summing_strategy: str = hp("add_all", choices=tuple(SUMMING), bug="A3")
    importance_scheduler_type: str = hp("linear_sparsity_reg", choices=tuple(SCHEDULERS), bug="B6")
    neuron_to_weight_importance_aggregation_mode: str = hp("min", choices=tuple(AGGREGATIONS), bug="B7",
                                                           doc="Agg; mean is the fixed reading of B7")
    filter_by_cumulative_mask: bool = hp(False, doc="multiply Agg(I) by the cumulative mask P")
    filter_unmasked_importance: bool = hp(False, bug="B8", doc="I^t ← I^t ⊙ M^t at the end of a task")
    step_multiply_training_mask: bool = hp(True, doc="ũ ← ũ ⊙ m^t (the step's soft training mask)")


class _TaskForward(nn.Module):
    """Captum's forward: logits of one task under one step's (detached) training mask."""

    def __init__(self, backbone: nn.Module, head: nn.Module, mask: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.backbone, self.head, self.mask = backbone, head, mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x, mask=self.mask))


@ALGORITHMS.register("fgadahat")
class FGAdaHAT(AdaHAT):
    """a_{l,ij} = α / (c_l · Agg(I^{<t}_{l,i}, I^{<t}_{l-1,j}) + α), I the accumulated neuron importance."""

    Config = FGAdaHATConfig
    summary = "AdaHAT guided by fine-grained neuron importance (nine measures)"

    def __init__(self, backbone, heads, cfg: FGAdaHATConfig, num_tasks: int) -> None:
        super().__init__(backbone, heads, cfg, num_tasks)
        self.measure = imp.measure(cfg.importance_type)
        # Each layer's own weight: a protected shortcut shares its block's conv2 layer name (B9) and must not
        # stand in for conv2 here, or the measures would read the 1x1 shortcut's weights.
        own = backbone.layer_weights()
        self._weights = {layer: mp.param for layer, mp in own.items()}
        owner = {id(m.weight): m for m in backbone.modules() if isinstance(getattr(m, "weight", None), nn.Parameter)}
        self._modules_of = {layer: owner[id(w)] for layer, w in self._weights.items()}
        self._next = {}  # the next layer along the main path (the one whose input units are this layer's)
        for mp in own.values():
            if mp.prev is not None and mp.prev not in self._next:
                self._next[mp.prev] = mp.layer
        self.summed_importance = {l: torch.zeros(n) for l, n in self.masks.layer_units.items()}  # S_I = I^{<t}
        self.importance_history: list[dict[str, torch.Tensor]] = []

    # ----- task boundaries -------------------------------------------------------------------------
    def setup_task(self, task, num_batches):
        super().setup_task(task, num_batches)
        device = next(self.parameters()).device
        self._acc = {l: torch.zeros(n, device=device) for l, n in self.masks.layer_units.items()}
        self._steps = 0
        self.backbone.record_activations = self.cfg.importance_type in imp.NEEDS_ACTIVATIONS

    def prepare_adjustment(self) -> None:
        """Agg(I^{<t}) parameter-wise (optionally ⊙ P) and, for the summative scheduler, min(S_i, S_j)."""
        params = list(self.backbone.masked_parameters())
        device = params[0].param.device
        summed = {l: v.to(device) for l, v in self.summed_importance.items()}
        agg = parameter_wise(params, summed, self.cfg.neuron_to_weight_importance_aggregation_mode)
        if self.cfg.filter_by_cumulative_mask:
            P = parameter_wise(params, self.masks.cumulative(), "min")
            agg = {n: a * P[n] for n, a in agg.items()}
        S = parameter_wise(params, self.masks.summative(), "min")
        self._fg = [(mp.param, mp.layer, agg[mp.name].contiguous(), S[mp.name]) for mp in params]

    def end_task(self, task):
        super().end_task(task)  # stores M^t
        I_t = {l: acc / max(self._steps, 1) + self.cfg.base_importance for l, acc in self._acc.items()}
        if self.cfg.filter_unmasked_importance:
            I_t = {l: v * self.masks.test_mask(task.id)[l] for l, v in I_t.items()}
        self.importance_history.append({l: v.detach().cpu() for l, v in I_t.items()})
        fold = SUMMING[self.cfg.importance_summing_strategy]
        for l in self.summed_importance:
            self.summed_importance[l] = self.summed_importance[l] + fold([h[l] for h in self.importance_history])
        self.backbone.record_activations = False

    # ----- training step ---------------------------------------------------------------------------
    def training_loss(self, batch: Batch, step: Step) -> torch.Tensor:
        self._batch = batch
        loss = super().training_loss(batch, step)
        self._train_mask = {l: m.detach() for l, m in self.masks.gate(self._s).items()}
        return loss

    def adjustment(self) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """a = α / (c · Agg(I) + α) with c from this step's network sparsity R_l."""
        cfg, t = self.cfg, self.task_id
        schedule = SCHEDULERS[cfg.importance_scheduler_type]
        out = []
        for p, layer, agg, S in self._fg:
            c = schedule(t, self.layer_sparsity[layer].detach(), cfg.base_linear, cfg.base_mask_sparsity_reg, S)
            out.append((p, cfg.adjustment_intensity / (c * agg + cfg.adjustment_intensity)))
        return out

    @torch.no_grad()
    def after_optimizer_step(self, step: Step) -> None:
        super().after_optimizer_step(step)
        for layer, u in self.step_importance().items():  # docs/algorithms/fgadahat.md steps 1-4
            u = imp.min_max_normalize(u)
            if self.cfg.step_multiply_training_mask:
                u = u * self._train_mask[layer]
            self._acc[layer] += u
        self._steps += 1

    def step_importance(self) -> dict[str, torch.Tensor]:
        """Raw per-unit importance u_{l,i} of this step for every weighted layer."""
        head = self.heads.head(self.task_id)
        views = {}
        for layer, w in self._weights.items():
            nxt = self._weights[self._next[layer]] if layer in self._next else head.weight
            act = self.backbone.activations.get(layer)
            views[layer] = imp.LayerView(layer, self._modules_of[layer], w.detach(), w.grad, nxt.detach(), nxt.grad,
                                         act.detach() if act is not None else None)
        step_view = None
        if self.cfg.importance_type in imp.ATTRIBUTION:
            self.backbone.record_activations = False
            # The model after this step, as the reference attributes it: its mask re-gated from the updated embeddings.
            model = _TaskForward(self.backbone, head, {l: m.detach() for l, m in self.masks.gate(self._s).items()})
            local_y = self._batch.y - self.heads.label_offset(self.task_id)  # the task head's own classes
            step_view = imp.StepView(self._batch.x, local_y, model)
            with torch.enable_grad():
                return {l: self.measure(v, step_view) for l, v in views.items()}
        return {l: self.measure(v, step_view) for l, v in views.items()}
