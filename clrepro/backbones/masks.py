"""HAT mask machinery shared by the whole HAT family: task embeddings, gates, annealing, stored masks."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from clrepro.backbones.base import MaskedParam

EMBEDDING_INITS = ("N01", "U-11", "U01", "U-10", "last")


def anneal_scale(batch_idx: int, num_batches: int, s_max: float, offset_parity: bool = True) -> float:
    """Annealed gate scale s for 0-based `batch_idx` of `num_batches` (docs/algorithms/hat.md, HAT Eq. 3).

    s = 1/s_max + (s_max - 1/s_max) * k / (B - 1), with k = batch_idx - 1 under `offset_parity`
    (bug B1: the reference's off-by-one, which gives batch 0 a negative s and never reaches s_max),
    else k = batch_idx. A single batch per epoch (B = 1) gets s = s_max in both modes.
    """
    if num_batches <= 1:
        return float(s_max)
    k = batch_idx - 1 if offset_parity else batch_idx
    return 1.0 / s_max + (s_max - 1.0 / s_max) * k / (num_batches - 1)


class HATMasks(nn.Module):
    """Per-layer task embedding e_l (shared, re-initialised per task) and the binary masks of finished tasks."""

    def __init__(self, layer_units: dict[str, int]) -> None:
        super().__init__()
        self.layer_units = dict(layer_units)
        self.embeddings = nn.ParameterDict({self.key(l): nn.Parameter(torch.randn(n)) for l, n in layer_units.items()})
        self.task_masks: dict[int, dict[str, torch.Tensor]] = {}
        self.register_buffer("_dummy", torch.zeros(0), persistent=False)

    @staticmethod
    def key(layer: str) -> str:
        return layer.replace(".", "/")

    @property
    def layers(self) -> list[str]:
        return list(self.layer_units)

    def embedding(self, layer: str) -> nn.Parameter:
        return self.embeddings[self.key(layer)]

    def reset_embeddings(self, mode: str = "N01") -> None:
        """Re-initialise every task embedding (`task_embedding_init_mode`); 'last' keeps them."""
        with torch.no_grad():
            for e in self.embeddings.values():
                {"N01": lambda: e.normal_(0.0, 1.0), "U-11": lambda: e.uniform_(-1.0, 1.0),
                 "U01": lambda: e.uniform_(0.0, 1.0), "U-10": lambda: e.uniform_(-1.0, 0.0),
                 "last": lambda: None}[mode]()

    def gate(self, s: float) -> dict[str, torch.Tensor]:
        """Soft mask m_l = sigmoid(s * e_l) of every layer."""
        return {l: torch.sigmoid(s * self.embedding(l)) for l in self.layer_units}

    def binary(self) -> dict[str, torch.Tensor]:
        """The current embeddings binarised: M_l = 1[e_l > 0] (end of task)."""
        return {l: (self.embedding(l).detach() > 0).float() for l in self.layer_units}

    def store(self, task_id: int, mask: dict[str, torch.Tensor] | None = None) -> None:
        """Store task `task_id`'s binary mask (default: the binarised current embeddings)."""
        self.task_masks[task_id] = {l: m.detach().clone() for l, m in (mask or self.binary()).items()}

    def test_mask(self, task_id: int) -> dict[str, torch.Tensor]:
        return self.task_masks[task_id]

    def ones(self) -> dict[str, torch.Tensor]:
        dev = self._dummy.device
        return {l: torch.ones(n, device=dev) for l, n in self.layer_units.items()}

    def _fold(self, tasks: Iterable[int] | None, combine) -> dict[str, torch.Tensor]:
        tasks = list(self.task_masks) if tasks is None else list(tasks)
        dev = self._dummy.device
        out = {l: torch.zeros(n, device=dev) for l, n in self.layer_units.items()}
        for t in tasks:
            for l in out:
                out[l] = combine(out[l], self.task_masks[t][l])
        return out

    def cumulative(self, tasks: Iterable[int] | None = None) -> dict[str, torch.Tensor]:
        """M^{<t}: elementwise max of the stored masks of `tasks` (default all); zeros if none."""
        return self._fold(tasks, torch.maximum)

    def summative(self, tasks: Iterable[int] | None = None) -> dict[str, torch.Tensor]:
        """S^{<t}: elementwise sum of the stored masks of `tasks` (default all)."""
        return self._fold(tasks, torch.add)

    def _apply(self, fn, recurse=True):  # keep stored masks on the module's device
        out = super()._apply(fn, recurse)
        self.task_masks = {t: {l: fn(m) for l, m in ms.items()} for t, ms in self.task_masks.items()}
        return out


AGGREGATIONS = {"min": torch.minimum, "max": torch.maximum,
                "mean": lambda a, b: (a + b) / 2}  # mean: the evident intent of the reference's crash (B7)


def parameter_wise(params: Iterable[MaskedParam], unit_values: dict[str, torch.Tensor],
                   agg: str = "min") -> dict[str, torch.Tensor]:
    """Lift per-unit values to per-parameter ones (docs/algorithms/hat.md step 3).

    Weight W_{l,ij} gets Agg(v_{l,i}, v_{l-1,j}) (conv kernels broadcast); the first layer's weights and
    every bias get v_{l,i}.
    """
    combine = AGGREGATIONS[agg]
    out = {}
    for mp in params:
        v = unit_values[mp.layer]
        shape = mp.param.shape
        if mp.kind == "bias":
            out[mp.name] = v
            continue
        extra = (1,) * (len(shape) - 2)
        rows = v.view(-1, 1, *extra)
        if mp.prev is None:
            out[mp.name] = rows.expand(shape)
        else:
            out[mp.name] = combine(rows, unit_values[mp.prev].view(1, -1, *extra)).expand(shape)
    return out
