"""AmnesiacHAT: AdaHAT with DER++ replay, backups and task-wise update records, so tasks can be unlearned."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from clrepro.algorithms.adahat import RATES, AdaHAT, AdaHATConfig
from clrepro.algorithms.base import Batch, Step
from clrepro.algorithms.buffer import Replay, ReservoirBuffer
from clrepro.algorithms.hat import HAT, free_units, mask_capacity, mask_sparsity
from clrepro.algorithms.records import UpdateRecords
from clrepro.backbones.masks import parameter_wise
from clrepro.config.hparams import hp
from clrepro.errors import ConfigError
from clrepro.registry import ALGORITHMS, BACKBONES

# The protection rules each architecture allows.
ARCHITECTURES = {"AdaHAT": tuple(RATES), "HAT": ("hat", "hat_random", "hat_const_1")}
REPAIR_STRATEGIES = ("joint", "sequential_finetuning", "sequential_adahat")


@dataclass
class AmnesiacHATConfig(AdaHATConfig):
    adjustment_mode: str = hp("adahat", choices=ARCHITECTURES["AdaHAT"] + ARCHITECTURES["HAT"],
                              doc="gradient protection rule; must belong to `architecture`")
    architecture: str = hp("AdaHAT", choices=tuple(ARCHITECTURES),
                           doc="AdaHAT (paper) or HAT (ablation amnesiacrealhat) gradient protection")
    if_replay: bool = hp(True, doc="DER++ replay of earlier tasks while training")
    buffer_size: int = hp(200, low=1, symbol="K", doc="reservoir capacity (examples over all tasks)")
    distillation_reg_factor: float = hp(0.5, low=0.0, symbol="alpha_D", doc="weight of the logit replay (MSE)")
    replay_ce_factor: float = hp(0.5, low=0.0, symbol="beta", doc="weight of the label replay (CE)")
    backup_init_mode: str = hp("delete", choices=("before", "delete"),
                               doc="backup B^u starts from θ − Δθ^u (delete, paper config) or from "
                                   "θ_0 + Σ_{τ<u} Δθ^τ (before, the reference code's default)")
    if_backup_compensation: bool = hp(True, doc="after deletion, copy the backups' weights where M^τ ∩ M^u")
    compensate_order: str = hp("normal", choices=("normal", "reverse"),
                               doc="affected tasks ascending (normal; later ones overwrite) or descending (A10)")
    if_replay_repairing: bool = hp(True, doc="after compensation, replay the affected tasks' buffer entries")
    repair_batch_size: int = hp(200, low=1, doc="replay samples per repair step")
    repair_num_steps: int = hp(50, low=0, symbol="s_repair", doc="repair steps (per affected task if sequential)")
    repair_strategy: str = hp("joint", choices=REPAIR_STRATEGIES, doc="all affected tasks at once, or one by one")
    release_unlearned_masks: bool = hp(False, bug="B12",
                                       doc="release unlearned tasks' units at once and drop their summative "
                                           "counts; false: protected one task longer and counted forever")
    compensate_every_unlearned: bool = hp(False, bug="B13",
                                          doc="compensate from every unlearned task's backups; false: only "
                                              "the first id of a request")
    fresh_repair_optimizer: bool = hp(False, bug="B14",
                                      doc="repair with a fresh optimizer and hold masked-out entries exactly; "
                                          "false: carry on the last task's optimizer state")


@ALGORITHMS.register("amnesiac_hat")
class AmnesiacHAT(AdaHAT):
    """AdaHAT (or HAT) + DER++ replay whose task updates can be taken back (docs/algorithms/amnesiac_hat.md).

    Learning task t: L = CE(z, y) + mean_{u∈U_t} CE(z^u, y) + λ·R + α_D·MSE(z_r', z_r) + β·CE(z_r', y_r), where
    z^u comes from backup B^{u→t} routed through u's units (`forward_with_backup`) and z_r' from each replayed
    sample's own stored mask and head. Δθ^t is recorded per task. Unlearning U after task t: delete
    Σ_{u∈U} Δθ^u, purge the buffer, copy backup weights where M^τ ∩ M^u, then repair by replaying the affected
    tasks with gradients confined to ∪ M^u.

    Backbones: hat_mlp and hat_resnet18. Every weighted tensor is handled unit-wise, a conv weight as its
    (out, in) channel matrix broadcast over the kernel; records cover the whole backbone state. ResNet-18's 1x1
    shortcut convs (B9): the backup forward routes a shortcut's output channels with its block's conv2 mask M^u
    in both modes. With `protect_shortcuts` false (reference) the shortcut is no masked parameter: it drifts
    unprotected, its record is plain (not split by owner), compensation never copies it and repair does not gate
    it, while deletion subtracts its Δθ^u like any other state. With `protect_shortcuts` true it is a masked
    parameter under conv2's units × the block input's units, and protection, owned records, compensation's
    P-region and repair's gate all cover it there.

    B14: the engine keeps its optimizer to itself, so in an unlearning run the algorithm mirrors that
    optimizer's state from the gradients it sees (`_track_optimizer`, exact for Adam and SGD with
    momentum) and the reference repair continues from it; `optimizer_cfg` (set by the engine) names the
    optimizer, Adam with lr 1e-3 when absent.
    """

    Config = AmnesiacHATConfig
    scenarios = ("TIL", "DIL")
    supports_unlearning = True
    summary = "AdaHAT + replay with backups and update records: unlearns tasks on request"

    @staticmethod
    def has_backups(backbone_cls: type) -> bool:
        """A HAT-masked backbone with a plain backup copy and a forward through it (hat_mlp, hat_resnet18)."""
        return bool(getattr(backbone_cls, "masked", False)) and all(
            callable(getattr(backbone_cls, f, None)) for f in ("plain_copy", "forward_with_backup"))

    @classmethod
    def check_config(cls, cfg: AmnesiacHATConfig, backbone_cls: type) -> None:
        if not cls.has_backups(backbone_cls):
            allowed = [n for n in BACKBONES.names() if cls.has_backups(BACKBONES.get(n))]
            name = getattr(backbone_cls, "registry_name", backbone_cls.__name__)
            raise ConfigError("backbone.name", f"AmnesiacHAT needs a HAT-masked backbone with backups; '{name}' "
                                               "has none", allowed)
        if cfg.adjustment_mode not in ARCHITECTURES[cfg.architecture]:
            raise ConfigError("algorithm.adjustment_mode", f"'{cfg.adjustment_mode}' is not a rule of "
                              f"architecture {cfg.architecture}", ARCHITECTURES[cfg.architecture])

    @classmethod
    def memory_bytes(cls, cfg, input_shape):
        return {"algorithm.buffer_size": ReservoirBuffer.bytes_for(cfg.buffer_size, input_shape)}

    def __init__(self, backbone, heads, cfg: AmnesiacHATConfig, num_tasks: int) -> None:
        self.check_config(cfg, type(backbone))
        super().__init__(backbone, heads, cfg, num_tasks)
        self.buffer = ReservoirBuffer(cfg.buffer_size)
        self.backups = nn.ModuleDict()  # B^{u→t} of the task being learned, keyed str(u)
        self.backup_states: dict[tuple[int, int], dict[str, torch.Tensor]] = {}  # (u, t) → B^{u→t} at t's end
        self.records: UpdateRecords | None = None  # Δθ^t over backbone and heads, in an unlearning run
        self.optimizer_cfg = None  # the engine's optimizer config (repair uses the same optimizer)
        self._theta0: dict[str, torch.Tensor] | None = None  # θ_0 of the backup-shaped state (init "before")
        self._unlearned: list[int] = []
        self._held: set[int] = set()  # unlearned tasks still protected until the next end_task (B12)
        self._replay_ids: list[int] = []
        self._pending: tuple | None = None
        self._shadow: dict[nn.Parameter, dict] = {}
        self._tracking = False
        self._table: dict[str, torch.Tensor] = {}
        self._table_row = torch.zeros(0, dtype=torch.long)

    # ----- unlearning run --------------------------------------------------------------------------
    def enable_unlearning(self) -> None:
        """Record Δθ^t from task 1 on and keep θ_0 (backups and deletion need both)."""
        self.records = UpdateRecords({"backbone": self.backbone, "heads": self.heads})
        self._theta0 = {k: v.detach().clone() for k, v in self.backbone.plain_copy().state_dict().items()}

    def _protected_tasks(self) -> list[int]:
        """Tasks whose units M^{<t} holds: all but the unlearned ones already released (B12)."""
        return [k for k in self.masks.task_masks if k not in self._unlearned or k in self._held]

    def _counted_tasks(self) -> list[int]:
        """Tasks the summative mask S^{<t} counts: every stored one (reference, B12) or those not unlearned."""
        if self.cfg.release_unlearned_masks:
            return [k for k in self.masks.task_masks if k not in self._unlearned]
        return list(self.masks.task_masks)

    # ----- task boundaries -------------------------------------------------------------------------
    def setup_task(self, task, num_batches):
        super().setup_task(task, num_batches)  # HAT: embeddings, M^{<t} over every stored mask, adjustment
        if self._unlearned:  # M^{<t} without the released tasks (B12)
            self.used = self.masks.cumulative(self._protected_tasks())
            self._free, self._free_count = free_units(self.used)
            self.prepare_adjustment()
        self._build_backups(task.id)
        self._replay_ids = [k for k in self.masks.task_masks if k != task.id and k not in self._unlearned]
        self._build_mask_table()
        self.start_phase("train")
        if self.records is not None:
            self.records.start(task.id)  # after the head exists: Δθ^t covers it

    def start_phase(self, name: str) -> None:
        """The engine builds a fresh optimizer per phase: restart the mirror of its state (B14)."""
        self._shadow = {}
        self._tracking = (self.records is not None and self.cfg.if_replay_repairing
                          and not self.cfg.fresh_repair_optimizer)

    def prepare_adjustment(self) -> None:
        """HAT: P from M^{<t}; AdaHAT: min-aggregated summative mask S^{<t} over `_counted_tasks`."""
        if self.cfg.architecture == "HAT":
            HAT.prepare_adjustment(self)
            return
        summative = self.masks.summative(self._counted_tasks())
        if self.cfg.adjustment_mode == "adahat_no_sum":
            summative = {l: torch.full_like(s, float(self.task_id)) for l, s in summative.items()}
        S = parameter_wise(self.backbone.masked_parameters(), summative, "min")
        self._S = [(mp.param, mp.layer, S[mp.name].contiguous()) for mp in self.backbone.masked_parameters()]

    def adjustment(self) -> list[tuple[nn.Parameter, torch.Tensor]]:
        return HAT.adjustment(self) if self.cfg.architecture == "HAT" else AdaHAT.adjustment(self)

    def _build_backups(self, t: int) -> None:
        """U_t = unlearnable \\ {t}: one plain backup per u, initialised per `backup_init_mode` (docs/algorithms/amnesiac_hat.md task setup)."""
        self.backups = nn.ModuleDict()
        if self.records is None:
            return
        live = set(self.unlearnable_ids)  # a task that stops being unlearnable never comes back
        self.backup_states = {k: v for k, v in self.backup_states.items() if k[0] in live}
        for u in self.unlearnable_ids:
            if u == t or u not in self.masks.task_masks or u in self._unlearned:
                continue
            backup = self.backbone.plain_copy()
            backup.load_state_dict(self._backup_init(u, backup.state_dict()))
            self.backups[str(u)] = backup

    @torch.no_grad()
    def _backup_init(self, u: int, current: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """delete: θ − Δθ^u; before: θ_0 + Σ_{τ<u} Δθ^τ over the records still kept."""
        if self.cfg.backup_init_mode == "delete":
            tasks, state, sign = [u], {k: v.clone() for k, v in current.items()}, -1.0
        else:
            tasks, state, sign = [k for k in self.records.records if k < u], {k: v.clone() for k, v in
                                                                                self._theta0.items()}, 1.0
        for k in tasks:
            if k not in self.records.records:
                continue
            delta = self.records.delta(k)
            for name, v in state.items():
                d = delta.get(f"backbone.{name}")
                if d is not None:
                    v.add_(d.to(v.device, v.dtype), alpha=sign)
        return state

    def _build_mask_table(self) -> None:
        """Stored masks stacked per layer with a task → row lookup, to mask replayed samples in one forward."""
        ids = sorted(self.masks.task_masks)
        if not ids:
            self._table = {}
            return
        dev = self.masks.task_masks[ids[0]][self.masks.layers[0]].device
        row = torch.zeros(max(ids) + 1, dtype=torch.long)
        row[ids] = torch.arange(len(ids))
        self._table_row = row.to(dev)
        self._table = {l: torch.stack([self.masks.task_masks[k][l] for k in ids]) for l in self.masks.layers}

    def end_task(self, task):
        super().end_task(task)  # M^t = 1[e > 0]
        t = task.id
        if self.records is not None:
            self.records.end(t, owned=self._owned_region(t))
        self._held.clear()  # the cumulative mask becomes the union over tasks not unlearned (B12)
        for u, backup in self.backups.items():
            self.backup_states[(int(u), t)] = {k: v.detach().clone() for k, v in backup.state_dict().items()}
        self.backups = nn.ModuleDict()
        alive = {id(p) for p in self.parameters()}
        self._shadow = {p: s for p, s in self._shadow.items() if id(p) in alive}

    def _owned_region(self, t: int) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        """Per masked parameter, the rows × cols task t owns (its units, and its units of the layer below)."""
        idx = {l: m.nonzero(as_tuple=True)[0] for l, m in self.masks.task_masks[t].items()}
        return {f"backbone.{mp.name}": (idx[mp.layer], None if mp.kind == "bias" or mp.prev is None else idx[mp.prev])
                for mp in self.backbone.masked_parameters()}

    # ----- training step ---------------------------------------------------------------------------
    def training_loss(self, batch: Batch, step: Step) -> torch.Tensor:
        self._s = self.scale(step)
        mask = self.masks.gate(self._s)
        logits = self.heads(self.backbone(batch.x, mask), batch.task_id)
        loss = F.cross_entropy(logits, batch.y)
        if len(self.backups):  # mean_u CE(z^u, y), z^u through u's units of B^u
            stored = self.masks.task_masks
            backup_ce = [F.cross_entropy(self.heads(self.backbone.forward_with_backup(batch.x, b, stored[int(u)], mask),
                                                    batch.task_id), batch.y) for u, b in self.backups.items()]
            loss = loss + torch.stack(backup_ce).mean()
        reg, sparsity = mask_sparsity(mask, self._free, self._free_count)
        self.layer_sparsity = {l: r.detach() for l, r in sparsity.items()}  # R_l for AdaHAT's rate, no graph kept
        loss = loss + self.cfg.mask_sparsity_reg_factor * reg
        if self.cfg.if_replay and self._replay_ids:
            replay = self.buffer.sample(len(batch.y), self._replay_ids)
            if replay is not None:
                loss = loss + self.replay_loss(replay)
        if self.cfg.if_replay or (self.records is not None and self.cfg.if_replay_repairing):
            self._pending = (batch.unaugmented, batch.y, logits.detach(), batch.task_id)
        return loss

    def replay_loss(self, replay: Replay) -> torch.Tensor:
        """DER++ term α_D·MSE(z', z_r) + β·CE(z', y_r), z' = head_{τ_r}(f(x_r; M^{τ_r})): each sample's stored
        test mask and own head. MSE is per sample over its head's width, then the batch mean (docs/algorithms/der.md, A5)."""
        row = self._table_row[replay.task_id]
        features = self.backbone(replay.x, {l: m[row] for l, m in self._table.items()})
        sq, ce = [], []
        for idx, out in self.heads.forward_per_sample(features, replay.task_id):
            sq.append(((out - replay.logits[idx, :out.shape[1]]) ** 2).mean(1).sum())
            ce.append(F.cross_entropy(out, replay.y[idx], reduction="sum"))
        mse, ce = torch.stack(sq).sum(), torch.stack(ce).sum()
        return (self.cfg.distillation_reg_factor * mse + self.cfg.replay_ce_factor * ce) / len(replay.y)

    def after_backward(self, step: Step) -> None:
        super().after_backward(step)  # adjust the main weighted layers (not backups, not heads), compensate e
        if self._tracking:
            self._track_optimizer()

    def after_optimizer_step(self, step: Step) -> None:
        super().after_optimizer_step(step)
        if self._pending is not None:  # (x, y, z.detach(), t) into the reservoir
            self.buffer.add(*self._pending)
            self._pending = None

    def _optimizer_settings(self) -> dict:
        o = self.optimizer_cfg
        return {"name": getattr(o, "name", "adam"), "lr": getattr(o, "lr", 1e-3),
                "betas": tuple(getattr(o, "betas", (0.9, 0.999))), "eps": getattr(o, "eps", 1e-8),
                "weight_decay": getattr(o, "weight_decay", 0.0), "momentum": getattr(o, "momentum", 0.0)}

    @torch.no_grad()
    def _track_optimizer(self) -> None:
        """Mirror the engine optimizer's state on this step's final gradients (Adam: step, m, v; SGD: momentum).

        A parameter without a gradient is skipped, as the optimizer skips it.
        """
        o = self._optimizer_settings()
        (b1, b2), wd = o["betas"], o["weight_decay"]
        for p in self.parameters():
            g = p.grad
            if g is None or not p.requires_grad:
                continue
            if wd:
                g = g.add(p, alpha=wd)
            st = self._shadow.get(p)
            if o["name"] == "adam":
                if st is None:
                    st = self._shadow[p] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(p),
                                            "exp_avg_sq": torch.zeros_like(p)}
                st["step"] += 1
                st["exp_avg"].lerp_(g, 1 - b1)
                st["exp_avg_sq"].mul_(b2).addcmul_(g, g, value=1 - b2)
            elif o["momentum"]:
                if st is None:
                    self._shadow[p] = {"momentum_buffer": g.clone()}
                else:
                    st["momentum_buffer"].mul_(o["momentum"]).add_(g)

    # ----- unlearning -------------------------------------------------------------------------
    def unlearn(self, task_ids: list[int]) -> None:
        """Deletion, buffer purge, backup compensation, replay repairing, then the masks as B12 says."""
        if self.records is None:
            raise RuntimeError("AmnesiacHAT.unlearn needs enable_unlearning() before task 1")
        U = [u for u in dict.fromkeys(task_ids) if u in self.masks.task_masks and u not in self._unlearned]
        if not U:
            return
        t = self.task_id
        self.records.delete(U)  # 1. θ ← θ − Σ_u Δθ^u, heads too
        for u in U:  # 2.
            self.buffer.delete_task(u)
        affected = [k for k in sorted(self.masks.task_masks)
                    if min(U) <= k <= t and k not in U and k not in self._unlearned]
        if self.cfg.if_backup_compensation:  # 3. B13: the reference compensates from U[0] only
            self.compensate(U if self.cfg.compensate_every_unlearned else U[:1], affected)
        if self.cfg.if_replay_repairing:  # 4.
            self.repair(U, affected)
        self._unlearned.extend(U)  # 5.
        if not self.cfg.release_unlearned_masks:
            self._held.update(U)
        self.backup_states = {k: v for k, v in self.backup_states.items() if k[0] not in U}

    @torch.no_grad()
    def compensate(self, unlearned: list[int], affected: list[int]) -> None:
        """Backup compensation: θ_{l,ij} ← B^{u→τ}_{l,ij} where min(P_{l,i}, P_{l−1,j}) = 1, P = M^τ ∩ M^u
        (first layer and biases: P_{l,i}); affected τ ascending (later overwrite earlier) or, reverse, descending."""
        order = affected if self.cfg.compensate_order == "normal" else affected[::-1]
        params = list(self.backbone.masked_parameters())
        stored = self.masks.task_masks
        for u in unlearned:
            for tau in order:
                backup = self.backup_states.get((u, tau))
                if backup is None:
                    continue
                P = {l: torch.minimum(stored[tau][l], stored[u][l]) for l in self.masks.layers}
                region = parameter_wise(params, P, "min")
                for mp in params:
                    src = backup[mp.name].to(mp.param.device, mp.param.dtype)
                    mp.param.copy_(torch.where(region[mp.name].bool(), src, mp.param))

    def repair(self, unlearned: list[int], affected: list[int]) -> None:
        """Replay repairing: DER++ steps on the affected tasks' buffer entries, masked-parameter gradients ⊙
        parameter-wise K ∩ M (K = ∪_u M^u; M the union of the batch's task masks, or M^τ when sequential)."""
        if not affected or self.cfg.repair_num_steps == 0:
            return
        params = list(self.backbone.masked_parameters())
        K = self.masks.cumulative(unlearned)
        stored = self.masks.task_masks
        self._build_mask_table()
        optimizer = self._repair_optimizer()
        was_training = self.training
        self.train()
        try:
            if self.cfg.repair_strategy == "joint":
                table = {l: torch.stack([stored[k][l] for k in affected]) for l in self.masks.layers}
                row = torch.zeros(max(affected) + 1, dtype=torch.long)
                row[affected] = torch.arange(len(affected))
                row = row.to(K[self.masks.layers[0]].device)
                for _ in range(self.cfg.repair_num_steps):
                    replay = self.buffer.sample(self.cfg.repair_batch_size, affected)
                    if replay is None:
                        break
                    present = torch.zeros(len(affected), device=row.device).index_fill_(0, row[replay.task_id], 1.0)
                    allow = {l: K[l] * (table[l] * present[:, None]).amax(0) for l in self.masks.layers}
                    self._repair_step(optimizer, replay, parameter_wise(params, allow, "min"))
            else:
                repaired: list[int] = []
                r = self.cfg.adjustment_intensity / self.cfg.epsilon  # AdaHAT-no-reg rate (sequential_adahat)
                for tau in affected:
                    gate = parameter_wise(params, {l: K[l] * stored[tau][l] for l in self.masks.layers}, "min")
                    if self.cfg.repair_strategy == "sequential_adahat":
                        S = parameter_wise(params, self.masks.summative(repaired), "min")
                        gate = {n: g * r / (S[n] + r) for n, g in gate.items()}
                    for _ in range(self.cfg.repair_num_steps):
                        replay = self.buffer.sample(self.cfg.repair_batch_size, [tau])
                        if replay is None:
                            break
                        self._repair_step(optimizer, replay, gate)
                    repaired.append(tau)
        finally:
            optimizer.zero_grad(set_to_none=True)
            self.train(was_training)

    def _repair_step(self, optimizer: torch.optim.Optimizer, replay: Replay, gate: dict[str, torch.Tensor]) -> None:
        optimizer.zero_grad(set_to_none=True)
        self.replay_loss(replay).backward()
        params = list(self.backbone.masked_parameters())
        frozen = []
        with torch.no_grad():
            for mp in params:  # heads are not masked
                if mp.param.grad is not None:
                    mp.param.grad.mul_(gate[mp.name])
                if self.cfg.fresh_repair_optimizer:
                    frozen.append((mp.param, gate[mp.name] == 0, mp.param.detach().clone()))
        optimizer.step()
        with torch.no_grad():  # B14 fix: a masked-out entry does not move, whatever the optimizer carries
            for p, keep, old in frozen:
                p.copy_(torch.where(keep, old, p))

    def _repair_optimizer(self) -> torch.optim.Optimizer:
        """The training optimizer's kind and settings; its last state too unless `fresh_repair_optimizer` (B14)."""
        o = self._optimizer_settings()
        params = [p for p in self.parameters() if p.requires_grad]
        if o["name"] == "adam":
            optimizer = torch.optim.Adam(params, lr=o["lr"], betas=o["betas"], eps=o["eps"],
                                         weight_decay=o["weight_decay"])
        else:
            optimizer = torch.optim.SGD(params, lr=o["lr"], momentum=o["momentum"], weight_decay=o["weight_decay"])
        if not self.cfg.fresh_repair_optimizer:
            for p, st in self._shadow.items():
                optimizer.state[p] = st
        return optimizer

    # ----- reporting -------------------------------------------------------------------------------
    def extra_metrics(self) -> dict[str, float]:
        """Mask capacity of the units held now, network capacity, the update records' size and the buffer's fill."""
        out = {**mask_capacity(self.masks.cumulative(self._protected_tasks())), **self.network_capacity()}
        if self.records is not None and self.records.records:
            stored = sum(self.records.stored_numel(k) for k in self.records.records)
            dense = sum(self.records.dense_numel(k) for k in self.records.records)
            out["records/stored_numel"] = float(stored)
            out["records/stored_fraction"] = stored / dense
        out["buffer/size"] = float(len(self.buffer))
        return out

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        self.buffer.apply(fn)  # the buffer follows the module's device
        if self._theta0 is not None:
            self._theta0 = {k: fn(v) for k, v in self._theta0.items()}
        self.backup_states = {key: {k: fn(v) for k, v in s.items()} for key, s in self.backup_states.items()}
        self._table = {l: fn(m) for l, m in self._table.items()}
        self._table_row = fn(self._table_row)
        self._shadow = {p: {k: (v if k == "step" else fn(v)) for k, v in s.items()} for p, s in self._shadow.items()}
        if self.records is not None:
            self.records.to(self.masks._dummy.device)
        return out
