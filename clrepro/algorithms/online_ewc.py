"""Online EWC (Schwarz et al. 2018): one running Fisher F ← γF + F_t and one snapshot θ* after the latest task."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clrepro.algorithms.ewc import fisher_pass
from clrepro.algorithms.fisher import FISHER_ESTIMATORS
from clrepro.algorithms.regularization import ParamDict, ParameterRegularization, TaskData
from clrepro.config.hparams import hp
from clrepro.registry import ALGORITHMS


@dataclass
class OnlineEWCConfig:
    parameter_change_reg_factor: float = hp(5000.0, low=0.0, symbol="λ",
                                            doc="L = CE + ½·λ·Σ γF(θ−θ*)² (EWC's λ and ½)")
    gamma: float = hp(1.0, low=0.0, high=1.0, symbol="γ", doc="decay of the old Fisher: F ← γF + F_t")
    decay_in_penalty: bool = hp(True, doc="penalise with γ·F, as Schwarz et al.'s Eq. and van de Ven's code; "
                                          "false: with F")
    fisher: str = hp("exact", choices=tuple(FISHER_ESTIMATORS),
                     doc="estimator of F_t, one eval-mode pass over the training data after each task "
                         "(exact = van de Ven's fisher_labels='all')")
    fisher_batch_size: int = hp(128, low=1, doc="samples per vectorised chunk (for `batch`: the batch size)")
    fisher_order: str = hp("shuffled", choices=("shuffled", "by_class"),
                           doc="fisher=batch only: shuffled batches (default) or the data sorted by label, as "
                               "Avalanche's unshuffled pass over its class-ordered experience datasets")


@ALGORITHMS.register("online_ewc")
class OnlineEWC(ParameterRegularization):
    """F ← γ·F + F_t, θ* ← θ(end of t); L = CE + ½·λ·Σ_i γF_i (θ_i − θ*_i)² (Schwarz et al. 2018, Progress & Compress).

    Unlearning: not separable (F is a decayed sum over tasks and θ* only the latest snapshot), so nothing
    per task could be dropped; `update_deletion` stays off.
    """

    Config = OnlineEWCConfig
    accumulate_path_integral = False
    summary = "online EWC: one running, γ-decayed Fisher penalty around the latest parameters"

    @property
    def reg_strength(self) -> float:
        return self.cfg.parameter_change_reg_factor

    @torch.no_grad()
    def decayed_sum(self, old: ParamDict, new: dict) -> ParamDict:
        """γ·F_old + F_new, parameter by parameter (F_old = 0 before the first task)."""
        return ParamDict({n: f + self.gamma * old[n] if n in old else f for n, f in new.items()})

    def estimate_importance(self, dataset: TaskData, prev_params: ParamDict, device) -> dict:
        """F ← γ·F_old + F_t, F_t from one eval-mode pass with the configured estimator."""
        new = fisher_pass(self, dataset, self.cfg.fisher, self.cfg.fisher_batch_size, self.cfg.fisher_order)
        return self.decayed_sum(self._custom_importance or ParamDict(), new)

    def compute_regularization_loss(self, importance: ParamDict, prev_params: ParamDict) -> torch.Tensor:
        """½ Σ_i γF_i (θ_i − θ*_i)² (γ dropped when decay_in_penalty is false)."""
        decay = self.gamma if self.cfg.decay_in_penalty else 1.0
        return 0.5 * decay * sum((importance[n] * (p - prev_params[n]).pow(2)).sum()
                                 for n, p in self.named_regularized_parameters())
