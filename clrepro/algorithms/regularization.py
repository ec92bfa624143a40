"""Parameter regularization: L = CE + strength · R(θ), R built from two plug-in functions (EWC, SI, yours)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from clrepro.algorithms.base import Batch, CLAlgorithm, Step
from clrepro.config.hparams import hp
from clrepro.data.task import Split, Task


class ParamDict(dict):
    """Parameter name → tensor. Keys are stored as van de Ven's code spells them ('.' → '__'), and either
    spelling is accepted, so a regularizer written for the regularization benchmark ports over unchanged."""

    @staticmethod
    def key(name: str) -> str:
        return name.replace(".", "__")

    def __init__(self, items: Any = (), **kw) -> None:
        super().__init__()
        self.update(items, **kw)

    def update(self, items: Any = (), **kw) -> None:  # type: ignore[override]
        for k, v in dict(items, **kw).items():
            self[k] = v

    def __setitem__(self, k: str, v) -> None:
        super().__setitem__(self.key(k), v)

    def __getitem__(self, k: str):
        return super().__getitem__(self.key(k))

    def __contains__(self, k) -> bool:
        return super().__contains__(self.key(k)) if isinstance(k, str) else False

    def __delitem__(self, k: str) -> None:
        super().__delitem__(self.key(k))

    def get(self, k: str, default=None):
        return super().get(self.key(k), default)

    def pop(self, k: str, *default):
        return super().pop(self.key(k), *default)

    def setdefault(self, k: str, default=None):
        return super().setdefault(self.key(k), default)


@dataclass
class TaskData(Split):
    """The training split handed to `estimate_importance`: y already in the scenario's label space (CIL
    offsets added), so `F.cross_entropy(model(x, data.task_id), y)` is the task's training loss."""

    task_id: int = 0


@dataclass
class RegularizationConfig:
    """Hyperparameters of a user regularizer that declares no `Config` of its own."""

    reg_strength: float = hp(1.0, low=0.0, symbol="λ", doc="weight of the regularization loss: L = CE + λ·R")
    gamma: float = hp(1.0, low=0.0, high=1.0, symbol="γ", doc="decay of old importance (model.gamma)")
    epsilon: float = hp(0.1, low=0.0, low_open=True, symbol="ξ", doc="damping (model.epsilon; SI's ξ)")


class ParameterRegularization(CLAlgorithm):
    """L = CE + strength · compute_regularization_loss(model, importance, prev_params) (abstract).

    Subclasses and plug-ins (`clrepro.plugins`) supply the two functions of the regularization benchmark:
      estimate_importance(model, dataset, prev_params, device) -> {name: tensor}
          once per task, in end_task; `dataset` is a TaskData (the task's training split, scenario targets,
          `task_id`); `prev_params` the snapshot taken when the task started. What it returns becomes
          `model._custom_importance` (it is the *accumulated* importance: add to the old one yourself).
      compute_regularization_loss(model, importance, prev_params) -> scalar tensor
          every training step from the second task on, with `model._custom_importance` and
          `model._custom_prev_params` (the parameters at the end of the latest task, θ*).
    Hooks on the model (names as in the benchmark): `param_list` (a list of callables yielding (name, param)
    of the regularized parameters), `_custom_W` (Σ −g·Δθ over the task's optimizer steps, SI's path integral),
    `_custom_p_old` (parameters before the last step), `gamma`, `epsilon`; `model(x, task_id)` gives logits
    and `model.task_id` is the task being learnt. Dicts are ParamDicts: 'backbone.fc.weight' and
    'backbone__fc__weight' both work.
    """

    Config: ClassVar[type] = RegularizationConfig
    # Accumulate _custom_W / _custom_p_old after every optimizer step (the benchmark's training loop always
    # does; EWC-type subclasses that never read them switch it off).
    accumulate_path_integral: ClassVar[bool] = True

    def __init__(self, backbone, heads, cfg, num_tasks: int) -> None:
        super().__init__(backbone, heads, cfg, num_tasks)
        self.gamma = float(getattr(cfg, "gamma", 1.0))
        self.epsilon = float(getattr(cfg, "epsilon", 0.1))
        self._custom_importance: ParamDict | None = None  # None until the first task is consolidated
        self._custom_prev_params: ParamDict = ParamDict()
        self._custom_W: ParamDict = ParamDict()
        self._custom_p_old: ParamDict = ParamDict()

    # ----- what is regularized -----------------------------------------------------------------------
    def named_regularized_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """Backbone parameters, plus the shared head in DIL; per-task heads are never penalised."""
        dil = self.heads.scenario == "DIL"
        for n, p in self.named_parameters():
            if p.requires_grad and (n.startswith("backbone.") or (dil and n.startswith("heads."))):
                yield n, p

    @property
    def param_list(self) -> list[Callable[[], Iterator[tuple[str, nn.Parameter]]]]:
        """The benchmark's hook: `for gen in model.param_list: for n, p in gen(): ...`."""
        return [self.named_regularized_parameters]

    @torch.no_grad()
    def snapshot(self) -> ParamDict:
        """A detached copy of the regularized parameters."""
        return ParamDict({n: p.detach().clone() for n, p in self.named_regularized_parameters()})

    @property
    def reg_strength(self) -> float:
        """The factor of R in the loss (a plug-in's `reg_strength`; EWC's λ, SI's c in subclasses)."""
        return float(getattr(self.cfg, "reg_strength", 1.0))

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    # ----- the two functions a regularizer supplies ---------------------------------------------------
    def estimate_importance(self, dataset: TaskData, prev_params: ParamDict, device: torch.device) -> dict:
        raise NotImplementedError

    def compute_regularization_loss(self, importance: ParamDict, prev_params: ParamDict) -> torch.Tensor:
        raise NotImplementedError

    # ----- task boundaries -------------------------------------------------------------------------
    def setup_task(self, task: Task, num_batches: int) -> None:
        """θ at the task's start is the snapshot `prev_params`; the path integral W restarts at 0."""
        super().setup_task(task, num_batches)
        self._custom_prev_params = self.snapshot()
        if self.accumulate_path_integral:
            self._custom_p_old = self.snapshot()
            self._custom_W = ParamDict({n: torch.zeros_like(p) for n, p in self._custom_p_old.items()})

    def importance_data(self, task: Task) -> TaskData:
        """The task's training split with scenario targets (what the engine trains on)."""
        return TaskData(task.train.x, task.train.y + self.heads.label_offset(task.id), task.id)

    def end_task(self, task: Task) -> None:
        importance = self.estimate_importance(self.importance_data(task), self._custom_prev_params, self.device)
        if not isinstance(importance, dict):
            raise TypeError(f"estimate_importance must return a dict of tensors, got {type(importance).__name__}")
        self.consolidate(task.id, ParamDict(importance))

    def consolidate(self, task_id: int, importance: ParamDict) -> None:
        """Keep the importance and θ* = θ(end of task) for the penalty of the following tasks."""
        self._custom_importance = importance
        self._custom_prev_params = self.snapshot()

    # ----- training step ---------------------------------------------------------------------------
    def regularization_loss(self) -> torch.Tensor:
        """R(θ) of this step (EWC sums one penalty per old task instead)."""
        return self.compute_regularization_loss(self._custom_importance, self._custom_prev_params)

    def has_penalty(self) -> bool:
        return self._custom_importance is not None

    def training_loss(self, batch: Batch, step: Step) -> torch.Tensor:
        ce = F.cross_entropy(self.forward(batch.x, batch.task_id, "train", step), batch.y)
        if not self.has_penalty():
            return ce
        return ce + self.reg_strength * self.regularization_loss()

    @torch.no_grad()
    def after_optimizer_step(self, step: Step) -> None:
        """SI's path integral (Zenke et al. 2017, Eq. 3 discretised): W += −g·Δθ, g the gradient the optimizer used."""
        if not self.accumulate_path_integral:
            return
        W, p_old = self._custom_W, self._custom_p_old
        for n, p in self.named_regularized_parameters():
            if p.grad is not None:
                W[n].addcmul_(p.grad, p - p_old[n], value=-1.0)
            p_old[n].copy_(p)
