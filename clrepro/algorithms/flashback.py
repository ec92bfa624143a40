"""Flashback Learning (Mahmoodi et al., Neural Networks 2025): two-phase training around a host CL method."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from clrepro.algorithms.base import Batch, CLAlgorithm, Step
from clrepro.config.hparams import build, hp
from clrepro.errors import ConfigError
from clrepro.registry import ALGORITHMS


# ----- plastic knowledge bases (what phase 1's primary model passes to phase 2) ----------------------------
class ParameterKnowledge:
    """Parameter-regularization hosts (EWC, online EWC): the primary parameters θ_p and their Fisher F_p.

    Plasticity (the FL-oEWC term): L_p = λ · ½ Σ_i F_p,i (θ_i − θ_p,i)², the host's own penalty pointed at the
    primary model instead of the old one, so phase 2 is pulled towards both (bidirectional regularization).
    """

    def __init__(self, primary, task) -> None:
        from clrepro.algorithms.ewc import fisher_pass

        estimator = getattr(primary.cfg, "fisher", "empirical")
        self.fisher = fisher_pass(primary, primary.importance_data(task), estimator,
                                  getattr(primary.cfg, "fisher_batch_size", None) or 128)
        params = {n: p.detach() for n, p in primary.named_regularized_parameters()}
        self.theta = {n: p.clone() for n, p in params.items()}

    def loss(self, host, batch: Batch, step: Step) -> torch.Tensor:
        return host.reg_strength * 0.5 * sum((self.fisher[n] * (p - self.theta[n]).pow(2)).sum()
                                             for n, p in host.named_regularized_parameters())


class DistillationKnowledge:
    """LwF host: the primary model's logits on the new task, distilled with the host's KD_T (FL-LwF)."""

    def __init__(self, primary, task) -> None:
        self.primary = primary.eval().requires_grad_(False)

    def loss(self, host, batch: Batch, step: Step) -> torch.Tensor:
        from clrepro.algorithms.lwf import lwf_distillation

        with torch.no_grad():
            teacher = self.primary(batch.x, batch.task_id, "test")
        return lwf_distillation(host(batch.x, batch.task_id, "train", step), teacher,
                                host.cfg.distillation_reg_temperature)


class LogitKnowledge:
    """DER-style hosts: the primary model's logits on the new task's inputs, matched by MSE as DER matches
    stored logits (clrepro's choice for DER; the paper's replay hosts are iCaRL and X-DER)."""

    def __init__(self, primary, task) -> None:
        self.primary = primary.eval().requires_grad_(False)

    def loss(self, host, batch: Batch, step: Step) -> torch.Tensor:
        with torch.no_grad():
            target = self.primary(batch.x, batch.task_id, "test")
        return F.mse_loss(host(batch.x, batch.task_id, "train", step), target)


KNOWLEDGE: dict[str, Callable] = {"online_ewc": ParameterKnowledge, "ewc": ParameterKnowledge,
                                  "lwf": DistillationKnowledge, "der": LogitKnowledge, "derpp": LogitKnowledge}


@dataclass
class FlashbackConfig:
    host: dict = hp({"name": "online_ewc"}, choices=None,
                    doc=f"the host algorithm and its hyperparameters ({', '.join(KNOWLEDGE)})")
    alpha_p: float = hp(1.0, low=0.0, symbol="α_p", doc="weight of the plasticity loss in phase 2")
    primary_fraction: float = hp(0.5, low=0.0, high=1.0, low_open=True,
                                 doc="share of the host's epoch budget given to phase 1 (same budget in total)")
    epochs_primary: int | None = hp(None, low=1, high=100_000,
                                    doc="phase 1 epochs (--epoch_cl); overrides primary_fraction")
    epochs_flashback: int | None = hp(None, low=1, high=100_000,
                                      doc="phase 2 epochs (--epoch_fl); overrides primary_fraction")
    oewc_plasticity_name_bug: bool = hp(False, bug="FL", doc="reproduce the released code, whose oEWC plasticity term "
                                                             "never runs ('ewc_on' compared with 'fl_ewc_on')")

    def __post_init__(self) -> None:
        node = dict(self.host or {})
        name = node.get("name")
        if name not in KNOWLEDGE:
            raise ConfigError("algorithm.host.name", f"{name!r} cannot host Flashback Learning", list(KNOWLEDGE))
        host_cls = ALGORITHMS.get(name, key="algorithm.host.name")
        import dataclasses
        self.host = {"name": name, **dataclasses.asdict(build(host_cls.Config, node, "algorithm.host"))}


@ALGORITHMS.register("flashback")
class Flashback(CLAlgorithm):
    """For t > 1: phase 1 trains the host from the old model θ_{t−1} to a primary model θ_p; phase 2 flashes
    back to θ_{t−1} (exact weights, host state and buffers included) and trains with
    L = L_host (CE + stability) + α_p · L_plasticity(θ; primary knowledge)   (FL, Eq. of phase 2).
    Task 1 trains the host alone. Epochs: e_primary + e_flashback = the host's epochs unless set explicitly.
    """

    Config = FlashbackConfig
    summary = "flashback learning: primary model, then back to the old model with bidirectional regularization"

    def __init__(self, backbone, heads, cfg: FlashbackConfig, num_tasks: int) -> None:
        super().__init__(backbone, heads, cfg, num_tasks)
        host_cls = ALGORITHMS.get(cfg.host["name"])
        host_cfg = build(host_cls.Config, cfg.host, "algorithm.host")
        self.host: CLAlgorithm = host_cls(backbone, heads, host_cfg, num_tasks)
        if heads.scenario not in host_cls.scenarios:
            raise ConfigError("scenario", f"'{heads.scenario}' is not supported by host '{cfg.host['name']}'",
                              host_cls.scenarios)
        self.lr_scheduler_live = host_cls.lr_scheduler_live
        self.phase = "train"
        self._old: list[CLAlgorithm] = []       # the host at the start of phase 1 (a list: not a submodule)
        self._knowledge = None
        self._task = None

    def _bind(self, host: CLAlgorithm) -> None:
        self.host, self.backbone, self.heads = host, host.backbone, host.heads

    # ----- task boundaries -------------------------------------------------------------------------
    def setup_task(self, task, num_batches):
        super().setup_task(task, num_batches)
        for name in ("unlearnable_ids", "unlearned_ids", "optimizer_cfg"):
            if hasattr(self, name):
                setattr(self.host, name, getattr(self, name))
        self.host.setup_task(task, num_batches)
        self._task = task

    @classmethod
    def check_trainer(cls, cfg: FlashbackConfig, trainer) -> None:
        """Phase 1 and phase 2 share the host's budget, so it must split in two unless the phases are set."""
        if cfg.epochs_primary is not None or cfg.epochs_flashback is not None:
            return
        if trainer.iterations is not None and trainer.iterations < 2:
            raise ConfigError("trainer.iterations", f"Flashback splits each task's budget into two phases; "
                              f"{trainer.iterations} step cannot be split (or set algorithm.epochs_primary/"
                              "epochs_flashback)", "≥ 2")
        if trainer.iterations is None and trainer.epochs < 2:
            raise ConfigError("trainer.epochs", f"Flashback splits each task's budget into two phases; "
                              f"{trainer.epochs} epoch cannot be split (or set algorithm.epochs_primary/"
                              "epochs_flashback)", "≥ 2")

    def phases(self, task_id, epochs):
        if len(self.seen_tasks) <= 1:
            return [("train", epochs)]
        c = self.cfg
        if c.epochs_primary is not None or c.epochs_flashback is not None:
            e1 = c.epochs_primary or max(1, epochs - (c.epochs_flashback or 0))
            e2 = c.epochs_flashback or max(1, epochs - e1)
            return [("primary", e1), ("flashback", e2)]
        if epochs < 2:
            raise ConfigError("trainer.epochs", f"Flashback splits each task's budget into two phases; {epochs} "
                              "epoch(s) cannot be split (set algorithm.epochs_primary/epochs_flashback)", "≥ 2")
        e1 = min(epochs - 1, max(1, round(epochs * c.primary_fraction)))
        return [("primary", e1), ("flashback", epochs - e1)]

    def start_phase(self, name):
        self.phase = name
        if name == "primary":
            self._old = [copy.deepcopy(self.host)]  # θ_{t−1} and the host's state before phase 1
        elif name == "flashback":
            primary = self.host
            self._knowledge = KNOWLEDGE[self.cfg.host["name"]](primary, self._task)
            self._bind(self._old.pop())  # flash back: exactly the old model
            self.host.train()

    def end_task(self, task):
        self.host.end_task(task)
        self._knowledge, self._old, self.phase = None, [], "train"

    # ----- training step ---------------------------------------------------------------------------
    def trainable_parameters(self):
        return self.host.trainable_parameters()

    def plasticity_active(self) -> bool:
        bugged = self.cfg.oewc_plasticity_name_bug and self.cfg.host["name"] == "online_ewc"
        return self.phase == "flashback" and self._knowledge is not None and not bugged

    def training_loss(self, batch: Batch, step: Step) -> torch.Tensor:
        loss = self.host.training_loss(batch, step)
        if self.plasticity_active():
            loss = loss + self.cfg.alpha_p * self._knowledge.loss(self.host, batch, step)
        return loss

    def after_backward(self, step):
        self.host.after_backward(step)

    def after_optimizer_step(self, step):
        self.host.after_optimizer_step(step)

    # ----- inference -------------------------------------------------------------------------------
    def forward(self, x, task_id, stage="test", step=None):
        return self.host(x, task_id, stage, step)

    def features(self, x):
        return self.host.features(x)

    def validation_loss(self, x, y, task_id):
        return self.host.validation_loss(x, y, task_id)

    def extra_metrics(self):
        return self.host.extra_metrics()
