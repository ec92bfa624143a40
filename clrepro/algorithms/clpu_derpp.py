"""CLPU-DER++: still-unlearnable tasks learn in temporary networks, merged into the DER++ main model later."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from clrepro.algorithms.base import Batch, Step
from clrepro.algorithms.buffer import Replay
from clrepro.algorithms.der import DERpp, DERppConfig
from clrepro.config.hparams import hp
from clrepro.registry import ALGORITHMS

INIT_MODES = ("from_main", "from_scratch")


@dataclass
class CLPUDERppConfig(DERppConfig):
    temporary_backbone_init_mode: str = hp("from_main", choices=INIT_MODES,
                                           doc="a temporary network starts as a copy of the main backbone (paper) "
                                               "or of its initialisation θ_0")
    merge_num_steps: int = hp(500, low=1, doc="merge steps; only read with merge_steps_from_config (the reference "
                                              "ignores it)")
    merge_batch_size: int = hp(200, low=1, doc="samples per merge step, for each of the two replay terms")
    merge_steps_from_config: bool = hp(False, bug="CLPU1",
                                       doc="merge for merge_num_steps steps; false: epochs × batches per epoch of "
                                           "the task being trained, as the reference")
    isolate_temporary_tasks: bool = hp(False, bug="CLPU2",
                                       doc="keep still-unlearnable tasks out of the main model: DER++ replay skips "
                                           "their entries and (DIL) each trains its own copy of the shared head; "
                                           "false: the reference replays them into the main model")
    reset_unlearned_head: bool = hp(False, bug="CLPU3",
                                    doc="TIL: re-initialise an unlearned task's head; false: it keeps its trained "
                                        "weights, as the reference")


@ALGORITHMS.register("clpu_derpp")
class CLPUDERpp(DERpp):
    """CLPU (Liu et al. 2022) over DER++; the cases are those of the CLPU paper's algorithm:

    Case I   (task t not unlearnable when learnt, e.g. age 0): DER++ on the main backbone,
             L = CE(f_t(x), y) + alpha_D·MSE(f_{τ_r}(x_r), z_r) + beta·CE(f_{τ_r}(x_r), y_r).
    Case II  (t unlearnable when learnt): a temporary copy g_t of the main backbone (or of θ_0) with t's head,
             L = CE(h_t(g_t(x)), y), no replay; the main backbone is not trained. t's samples still enter the
             reservoir with g_t's logits, which the merge distils. Testing t routes to g_t while it exists.
    Case III (t stops being unlearnable at a later task N, not unlearned): before N trains, a fresh optimizer
             (the run's, `optimizer_cfg`) runs S steps of
             L = alpha_D·MSE(f_t(x_t), z_t) + beta·CE(f_t(x_t), y_t) + alpha_D·MSE(f_τr(x_r), z_r) + beta·CE(·, y_r)
             on the main backbone, (x_t, z_t) from t's buffer entries (z_t: g_t's logits stored while t trained),
             (x_r, z_r) from those of the tasks already in the main model; then g_t is dropped. The reference takes
             S = epochs × batches per epoch of task N, overriding merge_num_steps (CLPU1).
    Case IV  (unlearn u): drop g_u and u's buffer entries; a merged task cannot be unlearned (the protocol
             validates ages), and such a request changes nothing.

    Reference behaviours kept by default, with their fixes behind flags: the main model's DER++ replay draws from
    every earlier task, still-temporary ones included, and in DIL a temporary task trains the shared head, so a
    temporary task leaks into the main model before it may be unlearned (CLPU2); an unlearned TIL task's head keeps
    its weights (CLPU3). The DD feature φ is the main backbone's output (the default `features`), as the
    reference's aggregated backbone output.
    """

    Config = CLPUDERppConfig
    scenarios = ("TIL", "DIL")
    supports_unlearning = True
    update_deletion = False
    summary = "DER++ whose still-unlearnable tasks train temporary networks, merged into the main model on expiry"

    def __init__(self, backbone, heads, cfg: CLPUDERppConfig, num_tasks: int) -> None:
        super().__init__(backbone, heads, cfg, num_tasks)
        self.initial_state = {k: v.detach().clone() for k, v in backbone.state_dict().items()}  # θ_0
        self.temporary_backbones = nn.ModuleDict()  # str(t) → g_t
        self.temporary_heads = nn.ModuleDict()  # DIL with isolate_temporary_tasks: str(t) → t's shared-head copy
        self.merges: dict[int, int] = {}  # merged task → merge steps taken
        self.optimizer_cfg = None  # the engine's optimizer config (the merge loop uses the same optimizer)
        self._epochs = 0
        self._batches = 0

    def is_temporary(self, task_id: int) -> bool:
        return str(task_id) in self.temporary_backbones

    # ----- task boundaries -------------------------------------------------------------------------
    def setup_task(self, task, num_batches):
        super().setup_task(task, num_batches)
        self._batches = num_batches
        t = task.id
        if t in self.unlearnable_ids and not self.is_temporary(t):  # Case II
            g = copy.deepcopy(self.backbone)
            if self.cfg.temporary_backbone_init_mode == "from_scratch":
                g.load_state_dict(self.initial_state)
            self.temporary_backbones[str(t)] = g
            if self.cfg.isolate_temporary_tasks and self.heads.scenario == "DIL":
                h = copy.deepcopy(self.heads.head(t))
                if self.cfg.temporary_backbone_init_mode == "from_scratch":
                    h.reset_parameters()
                self.temporary_heads[str(t)] = h

    def phases(self, task_id, epochs):
        self._epochs = epochs  # the reference's merge length reads the current trainer's max_epochs
        return super().phases(task_id, epochs)

    def start_phase(self, name):
        """Case III before the current task trains (the reference's on_train_start), ascending task order."""
        super().start_phase(name)
        for tau in self.expired():
            self.merge(tau)

    def expired(self) -> list[int]:
        """Temporary tasks no longer unlearnable now (and not unlearned): those to merge."""
        return sorted(k for k in map(int, self.temporary_backbones) if k != self.task_id
                      and k not in self.unlearnable_ids and k not in self.unlearned_ids)

    # ----- training step ---------------------------------------------------------------------------
    def trainable_parameters(self):
        """Case II: g_t and the heads (DIL isolated: g_t and its head copy); else the main backbone and the heads.
        The reference hands every parameter to the optimizer; the others get no gradient, so it is the same."""
        t = str(self.task_id)
        if t in self.temporary_backbones:
            head = self.temporary_heads[t] if t in self.temporary_heads else self.heads
            return [*self.temporary_backbones[t].parameters(), *head.parameters()]
        return [*self.backbone.parameters(), *self.heads.parameters()]

    def training_loss(self, batch: Batch, step: Step) -> torch.Tensor:
        if not self.is_temporary(self.task_id):
            return super().training_loss(batch, step)  # Case I: DER++
        logits = self.forward(batch.x, batch.task_id, "train", step)  # Case II: g_t, no replay
        self.remember(batch, logits)
        return F.cross_entropy(logits, batch.y)

    def replay_batch(self, size: int) -> Replay | None:
        """Case I's replay: every earlier task (reference), or only those in the main model (CLPU2 fix)."""
        if not self.cfg.isolate_temporary_tasks:
            return super().replay_batch(size)
        ids = [k for k in self.seen_tasks if k != self.task_id and not self.is_temporary(k)
               and k not in self.unlearned_ids]
        return self.buffer.sample(size, ids) if ids else None

    # ----- Case III: merge -------------------------------------------------------------------------
    def merge_loss(self, replay: Replay) -> torch.Tensor:
        """alpha_D·MSE(f_{τ_r}(x_r), z_r) + beta·CE(f_{τ_r}(x_r), y_r) on the main backbone in train mode."""
        logits = self.replay_logits(replay, "train")
        ce = sum(F.cross_entropy(out, replay.y[idx], reduction="sum") for idx, out in logits) / len(replay.y)
        return self.cfg.distillation_reg_factor * self.logit_distance(logits, replay) + self.cfg.replay_ce_factor * ce

    def merge(self, tau: int) -> None:
        """Distil g_τ's stored logits (and labels) of τ's entries into the main model while replaying the tasks
        already there, then drop g_τ."""
        rest = [k for k in self.seen_tasks if k != tau and not self.is_temporary(k) and k not in self.unlearned_ids]
        own = self.buffer.indices([tau])
        others = self.buffer.indices(rest) if rest else own[:0]
        steps = self.cfg.merge_num_steps if self.cfg.merge_steps_from_config else self._epochs * self._batches
        if len(own) == 0 and len(others) == 0:  # an empty buffer: nothing to merge with, g_τ is dropped all the same
            steps = 0
        bs = self.cfg.merge_batch_size
        optimizer = self._merge_optimizer()
        was_training = self.training
        self.train()
        try:
            with torch.enable_grad():
                for _ in range(steps):
                    terms = [self.merge_loss(r) for r in (self._draw(own, bs), self._draw(others, bs)) if r is not None]
                    optimizer.zero_grad(set_to_none=True)
                    torch.stack(terms).sum().backward()
                    optimizer.step()
        finally:
            optimizer.zero_grad(set_to_none=True)
            self.train(was_training)
        del self.temporary_backbones[str(tau)]
        if str(tau) in self.temporary_heads:
            del self.temporary_heads[str(tau)]
        self.merges[tau] = steps

    def _draw(self, idx: torch.Tensor, size: int) -> Replay | None:
        """`buffer.sample` over precomputed slots (the buffer does not change during a merge)."""
        if len(idx) == 0:
            return None
        pick = idx[torch.randint(len(idx), (min(size, len(idx)),)).to(idx.device)]
        return self.buffer.replay(pick)  # augmented when the run augments

    def _merge_optimizer(self) -> torch.optim.Optimizer:
        """A fresh optimizer of the run's kind (Adam, lr 1e-3 when `optimizer_cfg` is absent) on the main model."""
        o = self.optimizer_cfg
        params = [p for p in [*self.backbone.parameters(), *self.heads.parameters()] if p.requires_grad]
        lr, wd = getattr(o, "lr", 1e-3), getattr(o, "weight_decay", 0.0)
        if getattr(o, "name", "adam") == "adam":
            return torch.optim.Adam(params, lr=lr, betas=tuple(getattr(o, "betas", (0.9, 0.999))),
                                    eps=getattr(o, "eps", 1e-8), weight_decay=wd)
        return torch.optim.SGD(params, lr=lr, momentum=getattr(o, "momentum", 0.0), weight_decay=wd)

    # ----- inference and Case IV ---------------------------------------------------------------------
    def forward(self, x, task_id, stage="test", step=None):
        """Task t through g_t while it exists (every stage), else through the main backbone."""
        key = str(task_id)
        if key not in self.temporary_backbones:
            return self.heads(self.backbone(x), task_id)
        features = self.temporary_backbones[key](x)
        return self.temporary_heads[key](features) if key in self.temporary_heads else self.heads(features, task_id)

    def unlearn(self, task_ids: list[int]) -> None:
        """Case IV: drop g_u (and its head copy) and u's buffer entries; TIL head u re-initialised (CLPU3 fix)."""
        for u in dict.fromkeys(task_ids):
            if not self.is_temporary(u):  # merged or never temporary: the reference skips it
                continue
            self.buffer.delete_task(u)
            del self.temporary_backbones[str(u)]
            if str(u) in self.temporary_heads:
                del self.temporary_heads[str(u)]
            if self.cfg.reset_unlearned_head and self.heads.scenario == "TIL":
                self.heads.head(u).reset_parameters()

    def extra_metrics(self) -> dict[str, float]:
        return {"buffer/size": float(len(self.buffer)), "temporary_networks": float(len(self.temporary_backbones))}
