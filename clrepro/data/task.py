"""The per-task data a benchmark hands to the engine: whole splits as tensors."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass
class Split:
    """One split of one task: inputs and task-local labels 0..C_t-1."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: torch.device | str) -> "Split":
        return Split(self.x.to(device, non_blocking=True), self.y.to(device, non_blocking=True))


@dataclass
class Task:
    """Task `id` (1-based) with its class count and train/val/test splits."""

    id: int
    num_classes: int
    train: Split
    val: Split
    test: Split
    classes: tuple[int, ...] = ()
    mean: tuple[float, ...] = ()  # the per-channel constants the inputs were normalised with (augmentation pads
    std: tuple[float, ...] = ()   # with the normalised zero pixel)

    def to(self, device: torch.device | str) -> "Task":
        return replace(self, train=self.train.to(device), val=self.val.to(device), test=self.test.to(device))
