"""Backbone interfaces: a feature extractor, and a masked one whose units carry HAT gates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn


class Backbone(nn.Module):
    """Maps inputs to `output_dim` features; `forward(x, mask=None)`; masked backbones accept unit masks."""

    Config: type
    output_dim: int
    masked: bool = False
    plain_twin: str | None = None  # registry name of the unmasked equivalent (for reference runs)


@dataclass(frozen=True)
class MaskedParam:
    """A parameter protected unit-wise: `layer` owns its output units, `prev` (or None) its input units."""

    name: str
    param: nn.Parameter
    layer: str
    prev: str | None
    kind: str  # "weight" or "bias"
    shortcut: bool = False  # a 1x1 shortcut conv protected under its block's conv2 units (B9 fix); not the layer's own


class MaskedBackbone(Backbone):
    """A backbone whose weighted layers' units are gated by per-layer masks (HAT family).

    Subclasses set `self.layer_units` (ordered {layer: units}), build `self.hat = HATMasks(layer_units)`,
    and list their masked parameters in `masked_parameters()`. `forward(x, mask)` multiplies each
    weighted layer's output units by `mask[layer]` (None: no gating) and records activations when
    `record_activations` is on.
    """

    masked = True

    def __init__(self) -> None:
        super().__init__()
        self.record_activations = False
        self.activations: dict[str, torch.Tensor] = {}

    def masked_parameters(self) -> Iterator[MaskedParam]:
        raise NotImplementedError

    def layer_weights(self) -> dict[str, MaskedParam]:
        """Each weighted layer's own weight (never a shortcut protected under the same layer name)."""
        return {mp.layer: mp for mp in self.masked_parameters() if mp.kind == "weight" and not mp.shortcut}

    def _record(self, layer: str, h: torch.Tensor) -> None:
        if self.record_activations:
            self.activations[layer] = h
