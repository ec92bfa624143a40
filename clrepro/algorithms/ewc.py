"""EWC: multi-penalty elastic weight consolidation as the reference implements it (docs/algorithms/ewc.md)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call

from clrepro.algorithms.base import Batch, Step
from clrepro.algorithms.fisher import FISHER_ESTIMATORS, linear_squared_grads
from clrepro.algorithms.regularization import ParamDict, ParameterRegularization, TaskData
from clrepro.config.hparams import hp
from clrepro.errors import ConfigError
from clrepro.registry import ALGORITHMS


@dataclass
class EWCConfig:
    parameter_change_reg_factor: float = hp(
        5000.0, low=0.0, symbol="λ", bug="A8",
        doc="L = CE + Σ_τ ½·λ·Σ F_τ(θ−θ*_τ)²; the ½ is the reference's extra 0.5, so paper λ=5000 means this")
    when_calculate_fisher_information: str = hp(
        "train", choices=("train", "train_end"),
        doc="train: accumulate |B|·(∇CE_B)² on every training step of every epoch, divided by the samples "
            "seen (reference); train_end: one eval-mode pass over the training data after training")
    fisher: str = hp("batch", choices=tuple(FISHER_ESTIMATORS), bug="A7",
                     doc="Fisher estimator: batch (reference: squared batch-mean gradient × |B|), or the "
                         "per-sample empirical, exact, sampled (train_end only)")
    fisher_batch_size: int | None = hp(None, low=1, doc="batches of the train_end pass (default: the training "
                                                        "batch size; for per-sample estimators only memory)")
    cls_gradient_twice: bool = hp(False, bug="CLArena 1.1.0 EWC", doc=(
        "reproduce the released CLArena 1.1.0 step for the `train` timing: its Fisher backward of CE is not zeroed "
        "before the backward of the whole loss, so the update uses ∇CE + (∇CE + ∇penalty), summed in that order "
        "(under Adam about half the penalty's weight); false: ∇CE + ∇penalty, as the reference's later "
        "autograd.grad code"))
    fisher_order: str = hp("shuffled", choices=("shuffled", "by_class"),
                           doc="order of the train_end pass's batches for fisher=batch: shuffled (one pass of a "
                               "shuffled loader, reference); by_class: the data sorted by label (stable), as "
                               "Avalanche's unshuffled pass over its class-ordered experience datasets")


def fisher_pass(model: ParameterRegularization, dataset: TaskData, estimator: str, batch_size: int,
                order: str = "shuffled") -> ParamDict:
    """F of the regularized parameters from one eval-mode pass over `dataset` with a named estimator.

    For `batch` the data are shuffled (torch's global RNG) and the last partial batch is dropped, as one pass
    over the reference's train loader; with order="by_class" they are sorted by label instead (stable) and
    every batch is kept, the last one weighted by its size.
    """
    x, y = dataset.x, dataset.y
    if estimator == "batch" and order == "by_class":
        keep = torch.sort(y.cpu(), stable=True).indices.to(x.device)
        x, y = x[keep], y[keep]
    elif estimator == "batch":
        keep = torch.randperm(len(y))[: len(y) // batch_size * batch_size or len(y)].to(x.device)
        x, y = x[keep], y[keep]
    params = {n: p.detach() for n, p in model.named_regularized_parameters()}

    def logits_fn(ps, xb):  # the model's logits with the parameters `ps` substituted
        return functional_call(model, ps, (xb, dataset.task_id, "test"))

    was_training = model.training
    model.eval()
    try:
        fast = None if estimator == "batch" else linear_squared_grads(model, list(params))
        return ParamDict(FISHER_ESTIMATORS[estimator](logits_fn, params, x, y, batch_size, squared_grads=fast))
    finally:
        model.train(was_training)


@ALGORITHMS.register("ewc")
class EWC(ParameterRegularization):
    """One Fisher F_τ and snapshot θ*_τ per old task: L = CE + Σ_{τ<t} ½·λ·Σ_i F_τ,i (θ_i − θ*_τ,i)² (EWC Eq. 3)."""

    Config = EWCConfig
    lr_scheduler_live = False  # manual optimisation in the reference: the scheduler never steps (A11)
    update_deletion = True     # the AmnesiacHAT paper's amnesiac EWC baseline
    accumulate_path_integral = False
    summary = "elastic weight consolidation: one Fisher-weighted quadratic penalty per old task"

    @classmethod
    def check_config(cls, cfg: EWCConfig, backbone_cls: type) -> None:
        if cfg.when_calculate_fisher_information == "train" and cfg.fisher != "batch":
            raise ConfigError("algorithm.fisher", f"'{cfg.fisher}' needs when_calculate_fisher_information="
                              "train_end; during training only the batch estimator is accumulated", ("batch",))

    def __init__(self, backbone, heads, cfg: EWCConfig, num_tasks: int) -> None:
        super().__init__(backbone, heads, cfg, num_tasks)
        self.check_config(cfg, type(backbone))
        self.fishers: dict[int, ParamDict] = {}    # F_τ
        self.snapshots: dict[int, ParamDict] = {}  # θ*_τ
        self._batch_size = 1

    @property
    def reg_strength(self) -> float:
        return self.cfg.parameter_change_reg_factor

    # ----- Fisher information ------------------------------------------------------------------------
    def setup_task(self, task, num_batches):
        super().setup_task(task, num_batches)
        self._fisher_sum = ParamDict({n: torch.zeros_like(p) for n, p in self._custom_prev_params.items()})
        self._fisher_samples = 0

    def training_loss(self, batch: Batch, step: Step) -> torch.Tensor:
        self._batch_size = len(batch.y)
        if self.cfg.when_calculate_fisher_information != "train":
            return super().training_loss(batch, step)
        ce = F.cross_entropy(self.forward(batch.x, batch.task_id, "train", step), batch.y)
        params = [p for p in self.trainable_parameters() if p.requires_grad]
        # ∇CE alone, as the reference's autograd.grad: the Fisher must not see the penalty's gradient.
        grads = torch.autograd.grad(ce, params, allow_unused=True)
        self.accumulate_fisher(dict(zip(map(id, params), grads)), len(batch.y))
        # Hand ∇CE to the engine's backward through a linear surrogate with CE's value (one backward a step).
        surrogate = sum(((p * g).sum() for p, g in zip(params, grads) if g is not None), ce.new_zeros(()))
        loss = ce.detach() + (surrogate - surrogate.detach())
        if self.cfg.cls_gradient_twice:
            # The released code's un-zeroed Fisher backward: .grad already holds ∇CE when the update's backward
            # adds ∇CE + ∇penalty to it (the engine zeroes .grad before this hook), so the step uses
            # ∇CE + (∇CE + ∇penalty), summed in that order as in CLArena 1.1.0.
            for p, g in zip(params, grads):
                if g is not None:
                    p.grad = g.clone()
        if self.has_penalty():
            loss = loss + self.reg_strength * self.regularization_loss()
        return loss

    @torch.no_grad()
    def accumulate_fisher(self, grads_by_id: dict[int, torch.Tensor | None], batch_size: int) -> None:
        """`train` mode (A7): F_sum += |B|·(∇CE_B)², samples += |B|."""
        for n, p in self.named_regularized_parameters():
            g = grads_by_id.get(id(p))
            if g is not None:
                self._fisher_sum[n].add_(g.pow(2), alpha=batch_size)
        self._fisher_samples += batch_size

    def estimate_importance(self, dataset: TaskData, prev_params: ParamDict, device) -> dict:
        """F_t: the training-time accumulation (train) or one eval-mode pass with the chosen estimator (train_end)."""
        if self.cfg.when_calculate_fisher_information == "train":
            n = max(self._fisher_samples, 1)
            return ParamDict({k: s / n for k, s in self._fisher_sum.items()})
        return fisher_pass(self, dataset, self.cfg.fisher, self.cfg.fisher_batch_size or self._batch_size,
                           self.cfg.fisher_order)

    def consolidate(self, task_id: int, importance: ParamDict) -> None:
        super().consolidate(task_id, importance)
        self.fishers[task_id], self.snapshots[task_id] = importance, self._custom_prev_params

    # ----- penalty -------------------------------------------------------------------------------------
    def compute_regularization_loss(self, importance: ParamDict, prev_params: ParamDict) -> torch.Tensor:
        """½ Σ_i F_i (θ_i − θ*_i)² for one old task."""
        return 0.5 * sum((importance[n] * (p - prev_params[n]).pow(2)).sum()
                         for n, p in self.named_regularized_parameters())

    def regularization_loss(self) -> torch.Tensor:
        """Σ_{τ<t} ½ Σ_i F_τ,i (θ_i − θ*_τ,i)²: one penalty per old task, summed (not averaged)."""
        return sum(self.compute_regularization_loss(self.fishers[t], self.snapshots[t]) for t in self.fishers)

    def has_penalty(self) -> bool:
        return bool(self.fishers)

    # ----- unlearning ----------------------------------------------------------------------------------
    def forget(self, task_ids: list[int]) -> None:
        """Drop F_u and θ*_u (the update records already subtracted Δθ^u)."""
        for u in task_ids:
            self.fishers.pop(u, None)
            self.snapshots.pop(u, None)
