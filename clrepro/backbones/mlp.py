"""Multi-layer perceptrons: the papers' 784-256-100-64 MLP, plain and HAT-masked."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from clrepro.backbones.base import Backbone, MaskedBackbone, MaskedParam
from clrepro.backbones.masks import HATMasks
from clrepro.config.hparams import hp
from clrepro.registry import BACKBONES


@dataclass
class MLPConfig:
    hidden: list[int] = hp([256, 100, 64], low=1, high=2**20, doc="hidden layer widths (the papers: 256, 100, 64)")
    batch_norm: bool = hp(False, doc="BatchNorm1d before the mask and ReLU (clmlp default true; papers false)")
    dropout: float = hp(0.0, low=0.0, high=0.95, doc="dropout after each ReLU")


class _MLPLayers(nn.Module):
    def __init__(self, input_dim: int, cfg: MLPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dims = [input_dim, *cfg.hidden]
        self.fc = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.bn = nn.ModuleList(nn.BatchNorm1d(b) for b in cfg.hidden) if cfg.batch_norm else None
        # one ReLU module per layer (not torch.relu): Captum's DeepLift applies its rescale rule only to modules,
        # as the reference's nn.ReLU layers get it
        self.act = nn.ModuleList(nn.ReLU() for _ in cfg.hidden)
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else None
        self.output_dim = dims[-1]


@BACKBONES.register("mlp")
class MLP(Backbone):
    """Linear → [BN] → ReLU → [dropout] per hidden layer; features are the last hidden layer."""

    Config = MLPConfig

    def __init__(self, input_shape: tuple[int, ...], cfg: MLPConfig) -> None:
        super().__init__()
        self.body = _MLPLayers(math.prod(input_shape), cfg)
        self.output_dim = self.body.output_dim

    def forward(self, x: torch.Tensor, mask=None) -> torch.Tensor:
        h = x.flatten(1)
        b = self.body
        for i, fc in enumerate(b.fc):
            h = fc(h)
            if b.bn is not None:
                h = b.bn[i](h)
            h = b.act[i](h)
            if b.drop is not None:
                h = b.drop(h)
        return h


@BACKBONES.register("hat_mlp")
class HATMaskMLP(MaskedBackbone):
    """The MLP with a HAT gate on every layer: Linear → [BN] → ⊙ m_l → ReLU (docs/benchmarks.md)."""

    Config = MLPConfig
    plain_twin = "mlp"

    def __init__(self, input_shape: tuple[int, ...], cfg: MLPConfig) -> None:
        super().__init__()
        self.body = _MLPLayers(math.prod(input_shape), cfg)
        self.output_dim = self.body.output_dim
        self.layer_names = [f"fc{i + 1}" for i in range(len(cfg.hidden))]
        self.hat = HATMasks(dict(zip(self.layer_names, cfg.hidden)))

    def masked_parameters(self) -> Iterator[MaskedParam]:
        prev = None
        for i, (name, fc) in enumerate(zip(self.layer_names, self.body.fc)):
            yield MaskedParam(f"body.fc.{i}.weight", fc.weight, name, prev, "weight")
            yield MaskedParam(f"body.fc.{i}.bias", fc.bias, name, None, "bias")
            prev = name

    def forward(self, x: torch.Tensor, mask: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        h = x.flatten(1)
        b = self.body
        for i, (name, fc) in enumerate(zip(self.layer_names, b.fc)):
            h = fc(h)
            if b.bn is not None:
                h = b.bn[i](h)
            if mask is not None:
                h = h * mask[name]
            h = b.act[i](h)
            self._record(name, h)
            if b.drop is not None:
                h = b.drop(h)
        return h

    def plain_copy(self) -> MLP:
        """A plain, unmasked MLP holding this one's current weights (AmnesiacHAT's backup backbone, docs/algorithms/amnesiac_hat.md).

        Built on the meta device first, so making a copy draws nothing from the global RNG.
        """
        with torch.device("meta"):
            twin = MLP((self.body.fc[0].in_features,), self.body.cfg)
        twin.to_empty(device=self.body.fc[0].weight.device)
        twin.body.load_state_dict(self.body.state_dict())
        return twin.train(self.training)

    def forward_with_backup(self, x: torch.Tensor, backup: MLP, backup_mask: dict[str, torch.Tensor],
                            mask: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Layer-parallel forward through a backup B^u (docs/algorithms/amnesiac_hat.md, learning).

        The stream h starts at the input and at each layer l becomes
        y = M^u_l ⊙ Layer^{B^u}_l(h) + (1 − M^u_l) ⊙ Layer^{main}_l(h), then ⊙ m_l, ReLU, dropout as `forward`;
        Layer = Linear → [BN]. Only the units of u's stored mask M^u use the backup's weights.
        """
        h = x.flatten(1)
        b, bb = self.body, backup.body
        for i, name in enumerate(self.layer_names):
            own, main = bb.fc[i](h), b.fc[i](h)
            if b.bn is not None:
                own, main = bb.bn[i](own), b.bn[i](main)
            keep = backup_mask[name]
            h = keep * own + (1 - keep) * main
            if mask is not None:
                h = h * mask[name]
            h = b.act[i](h)
            if b.drop is not None:
                h = b.drop(h)
        return h
