"""SI: synaptic intelligence (Zenke et al. 2017), importance from each parameter's path integral of the loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clrepro.algorithms.regularization import ParamDict, ParameterRegularization, TaskData
from clrepro.config.hparams import hp
from clrepro.registry import ALGORITHMS


@dataclass
class SIConfig:
    c: float = hp(0.1, low=0.0, symbol="c", doc="surrogate-loss strength (Zenke et al.: 0.1 on permuted MNIST, "
                                                "1.0 on split MNIST)")
    epsilon: float = hp(0.1, low=0.0, low_open=True, symbol="ξ",
                        doc="damping: keeps ω bounded when a parameter barely moved (van de Ven's default)")
    omega_max: float | None = hp(None, symbol="ω_max",
                                 doc="clamp the penalty's ω from above after each task: ω = min(Σ_τ W_τ/(Δθ_τ²+ξ), "
                                     "ω_max), the unclamped sum kept for the next task (Avalanche's SI clamps at "
                                     "0.001); null: no clamp (Zenke et al., van de Ven)")


@ALGORITHMS.register("si")
class SI(ParameterRegularization):
    """ω_i += W_i / ((θ_i(end) − θ_i(start))² + ξ) after each task; L = CE + c·Σ_i ω_i (θ_i − θ*_i)².

    W_i = Σ_steps −g_i·Δθ_i is accumulated by ParameterRegularization.after_optimizer_step, with g the
    gradient the optimizer used (of the whole loss, as van de Ven's code; Zenke et al. use the unregularised
    one). Unlearning: ω is a sum over tasks of path integrals taken along one shared trajectory, so a task's
    share is not separable; `update_deletion` stays off.
    """

    Config = SIConfig
    summary = "synaptic intelligence: path-integral importance, quadratic penalty around the latest parameters"

    @property
    def reg_strength(self) -> float:
        return self.cfg.c

    @torch.no_grad()
    def estimate_importance(self, dataset: TaskData, prev_params: ParamDict, device) -> dict:
        """ω ← ω + W / (Δθ² + ξ) with Δθ = θ(end) − θ(start) over the task (Zenke et al. Eq. 5).

        With `omega_max` the penalty gets min(ω, ω_max) while the unclamped ω accumulates on.
        """
        omega = ParamDict(getattr(self, "_omega_sum", None) or self._custom_importance or {})
        for n, p in self.named_regularized_parameters():
            delta = p - prev_params[n]
            omega_add = self._custom_W[n] / (delta.pow(2) + self.epsilon)
            omega[n] = omega[n] + omega_add if n in omega else omega_add
        if self.cfg.omega_max is None:
            return omega
        self._omega_sum = omega
        return ParamDict({n: w.clamp(max=self.cfg.omega_max) for n, w in omega.items()})

    def compute_regularization_loss(self, importance: ParamDict, prev_params: ParamDict) -> torch.Tensor:
        """Σ_i ω_i (θ_i − θ*_i)² (Zenke et al. Eq. 4, without c)."""
        return sum((importance[n] * (p - prev_params[n]).pow(2)).sum() for n, p in self.named_regularized_parameters())
