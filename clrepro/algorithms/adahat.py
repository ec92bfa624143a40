"""AdaHAT: adaptive hard attention to the task (docs/algorithms/adahat.md), HAT with soft, capacity-aware protection."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from clrepro.algorithms.hat import HAT, HATConfig
from clrepro.backbones.masks import parameter_wise
from clrepro.config.hparams import hp
from clrepro.registry import ALGORITHMS

# Adjustment rate r_l from the step's network sparsity R_l (AdaHAT Eq. for r; docs/algorithms/adahat.md).
RATES: dict[str, Callable[[torch.Tensor, float, float], torch.Tensor]] = {
    "adahat": lambda R, alpha, eps: alpha / (eps + R),
    "adahat_no_sum": lambda R, alpha, eps: alpha / (eps + R),   # ablation: S replaced by t (below)
    "adahat_no_reg": lambda R, alpha, eps: torch.full_like(R, alpha / eps),  # ablation: R_l dropped
}


@dataclass
class AdaHATConfig(HATConfig):
    adjustment_mode: str = hp("adahat", choices=tuple(RATES), doc="adahat, or an ablation")
    adjustment_intensity: float = hp(1e-6, low=0.0, low_open=True, symbol="alpha",
                                     doc="adjustment intensity (paper 1e-6; acts through Adam's eps, B3)")
    epsilon: float = hp(0.1, low=0.0, low_open=True, symbol="epsilon", doc="keeps r_l finite when R_l → 0")


@ALGORITHMS.register("adahat")
class AdaHAT(HAT):
    """Gradients scaled by a = r_l / (min(S_{l,i}, S_{l-1,j}) + r_l), S the summative mask, r_l = α/(ε + R_l)."""

    Config = AdaHATConfig
    summary = "HAT with adaptive protection from the summative mask and network sparsity"

    def prepare_adjustment(self) -> None:
        """Parameter-wise summative mask S^{<t} (min-aggregated; first layer and biases: S_{l,i})."""
        summative = self.masks.summative()
        if self.cfg.adjustment_mode == "adahat_no_sum":  # every parameter as if used by all t tasks so far
            summative = {l: torch.full_like(s, float(self.task_id)) for l, s in summative.items()}
        S = parameter_wise(self.backbone.masked_parameters(), summative, "min")
        self._S = [(mp.param, mp.layer, S[mp.name].contiguous()) for mp in self.backbone.masked_parameters()]

    def adjustment(self) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
        """a = r_l / (S + r_l) with this step's r_l = α / (ε + R_l)."""
        rate = RATES[self.cfg.adjustment_mode]
        r = {l: rate(R.detach(), self.cfg.adjustment_intensity, self.cfg.epsilon)
             for l, R in self.layer_sparsity.items()}
        return [(p, r[layer] / (S + r[layer])) for p, layer, S in self._S]
