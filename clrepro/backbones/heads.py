"""Output heads per scenario: TIL (one head per task), CIL (all heads concatenated), DIL (one shared head)."""

from __future__ import annotations

import torch
from torch import nn

SCENARIOS = ("TIL", "CIL", "DIL")


class Heads(nn.Module):
    """Linear heads created per task; `forward(features, task_id)` gives the scenario's logits."""

    def __init__(self, scenario: str, input_dim: int) -> None:
        super().__init__()
        self.scenario, self.input_dim = scenario, input_dim
        self.heads = nn.ModuleDict()
        self.offsets: dict[int, int] = {}

    def add_task(self, task_id: int, num_classes: int) -> None:
        """Create task `task_id`'s head (DIL: only the first task creates the shared head)."""
        key = "shared" if self.scenario == "DIL" else str(task_id)
        if key in self.heads:
            return
        device = next(self.parameters(), torch.zeros(0)).device
        self.offsets[task_id] = sum(h.out_features for h in self.heads.values())
        self.heads[key] = nn.Linear(self.input_dim, num_classes).to(device)

    def head(self, task_id: int) -> nn.Linear:
        """Task `task_id`'s own head (DIL: the shared one)."""
        return self.heads["shared" if self.scenario == "DIL" else str(task_id)]

    def label_offset(self, task_id: int) -> int:
        """Offset from task-local labels to this scenario's targets (CIL only)."""
        return self.offsets.get(task_id, 0) if self.scenario == "CIL" else 0

    def forward(self, features: torch.Tensor, task_id: int) -> torch.Tensor:
        if self.scenario == "TIL":
            return self.heads[str(task_id)](features)
        if self.scenario == "DIL":
            return self.heads["shared"](features)
        return torch.cat([h(features) for h in self.heads.values()], dim=1)

    def forward_per_sample(self, features: torch.Tensor, task_ids: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Logits grouped by task: [(index of the samples of task k, their logits through head k)]."""
        out = []
        for k in torch.unique(task_ids).tolist():
            idx = (task_ids == k).nonzero(as_tuple=True)[0]
            out.append((idx, self.forward(features[idx], int(k))))
        return out
