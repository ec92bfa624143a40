"""Task-wise update records Δθ^t = θ_end − θ_start, stored sparsely, and their deletion (docs/algorithms/amnesiac_hat.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

SPARSE_BELOW = 0.5  # a record tensor with fewer non-zeros than this fraction is stored as (indices, values)


@dataclass
class OwnedUpdate:
    """One tensor of Δθ^t split by task t's mask (the thesis' "task-owned + residual" form), losslessly.

    `block` is Δθ^t on the entries task t owns, the dense sub-tensor at rows × cols (rows: owned output units;
    cols: owned input units, None for every column: first layer, biases); `residual` is the rest, sparse COO.
    """

    rows: torch.Tensor
    cols: torch.Tensor | None
    block: torch.Tensor
    residual: torch.Tensor

    @classmethod
    def split(cls, delta: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor | None) -> "OwnedUpdate":
        block = delta.index_select(0, rows)
        rest = delta.clone()
        if cols is None:
            rest[rows] = 0
        else:
            block = block.index_select(1, cols)
            rest[rows[:, None], cols] = 0
        return cls(rows, cols, block, rest.to_sparse())

    def dense(self) -> torch.Tensor:
        out = self.residual.to_dense()
        if self.cols is None:
            out[self.rows] = self.block
        else:
            out[self.rows[:, None], self.cols] = self.block
        return out

    def numel(self) -> int:
        """Numbers kept: the block, its row/column indices, and the residual's values plus indices."""
        n = self.block.numel() + self.rows.numel() + (self.cols.numel() if self.cols is not None else 0)
        return n + self.residual._nnz() * (1 + self.residual.sparse_dim())

    def to(self, device) -> "OwnedUpdate":
        return OwnedUpdate(self.rows.to(device), None if self.cols is None else self.cols.to(device),
                           self.block.to(device), self.residual.to(device))


def _numel(v) -> int:
    if isinstance(v, OwnedUpdate):
        return v.numel()
    return v._nnz() * (1 + v.sparse_dim()) if v.is_sparse else v.numel()


class UpdateRecords:
    """Records what training task t changed in some modules and subtracts it on request.

    `start(t)` snapshots the modules' floating-point state (parameters and buffers) just before task t's fit;
    `end(t)` stores Δθ^t = θ_end − θ_start. A tensor of Δθ^t that is mostly zero (HAT cuts the gradient of
    units owned by earlier tasks, so their entries do not move) is kept as a sparse COO tensor, the rest dense.
    `delete(U)` applies θ ← θ − Σ_{u∈U} Δθ^u and forgets the records (docs/algorithms/amnesiac_hat.md step 1).
    `end(t, owned)` may also name, per tensor, the rows × cols task t owns: the tensor is then kept as an
    `OwnedUpdate` (dense owned block + sparse residual) when that is smaller. Every form is lossless.
    """

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        self.modules = modules
        self._start: dict[str, torch.Tensor] | None = None
        self.records: dict[int, dict[str, torch.Tensor]] = {}

    def _state(self) -> dict[str, torch.Tensor]:
        out = {}
        for prefix, m in self.modules.items():
            for k, v in m.state_dict(keep_vars=False).items():
                if v.is_floating_point():
                    out[f"{prefix}.{k}"] = v
        return out

    def start(self, task_id: int) -> None:
        self._start = {k: v.detach().clone() for k, v in self._state().items()}

    def end(self, task_id: int,
            owned: dict[str, tuple[torch.Tensor, torch.Tensor | None]] | None = None) -> None:
        """Store Δθ^t; `owned` maps a state key to the (rows, cols) task t owns (see `OwnedUpdate`)."""
        if self._start is None:
            raise RuntimeError("UpdateRecords.end called without start")
        rec = {}
        for k, v in self._state().items():
            before = self._start.get(k)
            delta = v.detach() - before if before is not None and before.shape == v.shape else v.detach().clone()
            rec[k] = self._smallest(delta, owned.get(k) if owned is not None else None)
        self.records[task_id] = rec
        self._start = None

    @staticmethod
    def _smallest(delta: torch.Tensor, owned: tuple[torch.Tensor, torch.Tensor | None] | None):
        """Sparse below `SPARSE_BELOW` density, else dense; with an owned region, the smallest of that, dense and
        the `OwnedUpdate` (first on ties). Sizes are counted before building, so only the kept form is made
        (a ResNet-18 record has 11M entries per task)."""
        n, nnz = delta.numel(), int(torch.count_nonzero(delta))
        per = 1 + delta.dim()  # a COO entry: its value and one index per dimension
        sparse = (nnz / n if n else 0.0) < SPARSE_BELOW
        options = [("sparse", nnz * per) if sparse else ("dense", n)]
        if owned is not None:
            rows, cols = owned
            block = delta.index_select(0, rows)
            if cols is not None:
                block = block.index_select(1, cols)
            owned_numel = block.numel() + rows.numel() + (cols.numel() if cols is not None else 0)
            options += [("dense", n), ("owned", owned_numel + (nnz - int(torch.count_nonzero(block))) * per)]
        kind = min(options, key=lambda o: o[1])[0]
        if kind == "owned":
            return OwnedUpdate.split(delta, *owned)
        return delta.to_sparse() if kind == "sparse" else delta

    def delta(self, task_id: int) -> dict[str, torch.Tensor]:
        """Δθ^t as dense tensors."""
        return {k: (v.dense() if isinstance(v, OwnedUpdate) else v.to_dense() if v.is_sparse else v)
                for k, v in self.records[task_id].items()}

    def stored_numel(self, task_id: int) -> int:
        """Numbers kept for task t's record (values plus indices of the sparse tensors)."""
        return sum(_numel(v) for v in self.records[task_id].values())

    def dense_numel(self, task_id: int) -> int:
        """Numbers a dense record of task t would keep."""
        return sum(math.prod(self._shape(v)) for v in self.records[task_id].values())

    @staticmethod
    def _shape(v) -> tuple[int, ...]:
        return tuple((v.residual if isinstance(v, OwnedUpdate) else v).shape)

    @torch.no_grad()
    def delete(self, task_ids: list[int]) -> None:
        """θ ← θ − Σ_{u} Δθ^u for the recorded tasks among `task_ids`; their records are dropped."""
        state = self._state()
        for u in task_ids:
            if u not in self.records:
                continue
            for k, d in self.delta(u).items():
                if k in state:
                    state[k].sub_(d.to(state[k].device, state[k].dtype))
            del self.records[u]

    def to(self, device) -> "UpdateRecords":
        self.records = {t: {k: v.to(device) for k, v in r.items()} for t, r in self.records.items()}
        if self._start is not None:
            self._start = {k: v.to(device) for k, v in self._start.items()}
        return self
