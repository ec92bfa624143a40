"""A reservoir memory of (x, y, logits, task id) on the device, shared by DER, DER++ and AmnesiacHAT."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Replay:
    """A batch drawn from the buffer: inputs, targets, stored logits (padded to the widest head) and task ids."""

    x: torch.Tensor
    y: torch.Tensor
    logits: torch.Tensor
    task_id: torch.Tensor
    index: torch.Tensor  # slots the samples came from


class ReservoirBuffer:
    """Reservoir sampling over every example seen (Vitter's algorithm R), capacity K.

    While not full, examples are appended. Once full, the n-th example seen (1-based) draws j ~ U{0..n−1}
    and overwrites slot j if j < K, so each example seen so far is kept with probability K/n.
    A batch is inserted in one vectorised step with the same semantics as inserting its examples one by one
    (when two examples of a batch draw the same slot, the later one wins).

    `transform` (the run's train-time augmentation, or None) is applied to the inputs of every batch `sample`
    hands out: stored inputs stay unaugmented and are augmented at replay time, as DER does.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = int(capacity)
        self.seen = 0
        self.size = 0
        self.x: torch.Tensor | None = None
        self.y: torch.Tensor | None = None
        self.logits: torch.Tensor | None = None
        self.task_id: torch.Tensor | None = None
        self.transform = None

    def __len__(self) -> int:
        return self.size

    @staticmethod
    def bytes_for(capacity: int, input_shape: tuple[int, ...]) -> int:
        """A lower bound of the memory `capacity` float32 inputs with their labels and task ids take."""
        n = 1
        for d in input_shape:
            n *= d
        return int(capacity) * (4 * n + 16)

    def _allocate(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> None:
        K, dev = self.capacity, x.device
        self.x = torch.zeros((K, *x.shape[1:]), dtype=x.dtype, device=dev)
        self.y = torch.zeros(K, dtype=y.dtype, device=dev)
        self.logits = torch.zeros((K, logits.shape[1]), dtype=logits.dtype, device=dev)
        self.task_id = torch.zeros(K, dtype=torch.long, device=dev)

    def _widen(self, width: int) -> None:
        if width > self.logits.shape[1]:
            pad = self.logits.new_zeros((self.capacity, width - self.logits.shape[1]))
            self.logits = torch.cat([self.logits, pad], dim=1)

    @torch.no_grad()
    def add(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor, task_id: int | torch.Tensor) -> None:
        """Offer a batch to the reservoir; logits are stored detached (the model's output at this step)."""
        if self.capacity <= 0 or len(x) == 0:
            return
        if self.x is None:
            self._allocate(x, y, logits)
        self._widen(logits.shape[1])
        b, dev = len(x), self.x.device
        tid = task_id if isinstance(task_id, torch.Tensor) else torch.full((b,), int(task_id), dtype=torch.long)
        n = torch.arange(self.seen + 1, self.seen + b + 1)  # 1-based count of each example
        pos = torch.arange(b)
        free = pos < self.capacity - self.size  # while not full: append
        slot = torch.where(free, self.size + pos, (torch.rand(b) * n).long())  # j ~ U{0..n−1} once full
        keep = slot < self.capacity
        # The later example wins a slot drawn twice in one batch, as sequential insertion would give.
        owner = torch.full((self.capacity,), -1, dtype=torch.long)
        owner.scatter_reduce_(0, slot[keep], pos[keep], reduce="amax")
        slots = (owner >= 0).nonzero(as_tuple=True)[0]
        src = owner[slots]
        if len(slots):
            slots_d, src_d = slots.to(dev), src.to(dev)
            self.x[slots_d] = x.detach()[src_d]
            self.y[slots_d] = y.detach()[src_d]
            self.logits[slots_d] = 0
            self.logits[slots_d, :logits.shape[1]] = logits.detach().to(self.logits.dtype)[src_d]
            self.task_id[slots_d] = tid.to(dev)[src_d]
        self.seen += b
        self.size = min(self.capacity, self.size + b)

    def indices(self, task_ids: list[int] | None = None) -> torch.Tensor:
        """Slots holding entries of `task_ids` (all filled slots if None)."""
        if self.size == 0:
            return torch.zeros(0, dtype=torch.long)
        filled = self.task_id[: self.size]
        if task_ids is None:
            return torch.arange(self.size, device=filled.device)
        wanted = torch.tensor(list(task_ids), dtype=torch.long, device=filled.device)
        return torch.isin(filled, wanted).nonzero(as_tuple=True)[0]

    def sample(self, size: int, task_ids: list[int] | None = None) -> Replay | None:
        """Up to `size` entries drawn uniformly with replacement among those of `task_ids` (None: any); None if empty.

        As the reference's `get_data`, the draw is capped at the number of matching entries.
        """
        idx = self.indices(task_ids)
        if len(idx) == 0:
            return None
        pick = idx[torch.randint(len(idx), (min(size, len(idx)),)).to(idx.device)]
        return self.replay(pick)

    def replay(self, pick: torch.Tensor) -> Replay:
        """The entries in slots `pick`, their inputs through `transform` when there is one."""
        x, tid = self.x[pick], self.task_id[pick]
        return Replay(x if self.transform is None else self.transform(x, tid), self.y[pick], self.logits[pick], tid,
                      pick)

    @torch.no_grad()
    def delete_task(self, task_id: int) -> None:
        """Drop every entry of `task_id`, compacting the buffer (the slots become free again)."""
        if self.size == 0:
            return
        keep = (self.task_id[: self.size] != task_id).nonzero(as_tuple=True)[0]
        k = len(keep)
        for name in ("x", "y", "logits", "task_id"):
            t = getattr(self, name)
            t[:k] = t[keep].clone()
        self.size = k
        # Later insertions refill the freed slots first (the buffer is no longer full); the count of examples
        # seen goes on, as the reference's buffer keeps it.

    def apply(self, fn) -> "ReservoirBuffer":
        """Map the stored tensors (a module's `_apply` passes its device/dtype move here)."""
        for name in ("x", "y", "logits", "task_id"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, fn(t))
        return self

    def to(self, device) -> "ReservoirBuffer":
        return self.apply(lambda t: t.to(device))
