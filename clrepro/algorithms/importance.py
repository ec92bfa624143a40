"""FG-AdaHAT's neuron-importance measures (docs/algorithms/fgadahat.md): per-unit importance of each weighted layer.

Direct measures read weights, their gradients and the recorded activations; the attribution measures
(FA, II, GS, DL) use Captum's layer attribution classes on the layer's module output, with the
forward called by keyword (the reference's B11 passed arguments in the wrong order).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


@dataclass
class LayerView:
    """One weighted layer as a measure sees it."""

    name: str
    module: nn.Module                 # the Linear/Conv whose output units are the layer's units
    weight: torch.Tensor              # (out, in, ...) after the optimizer step
    grad: torch.Tensor | None         # its gradient after the adjustment (A4)
    next_weight: torch.Tensor         # the next weighted layer's (or the task head's) weight
    next_grad: torch.Tensor | None
    activation: torch.Tensor | None   # recorded post-mask, post-ReLU output (batch, units, ...)


@dataclass
class StepView:
    """A training step as the measures see it: the batch and a forward with that step's training mask."""

    x: torch.Tensor
    y: torch.Tensor
    model: nn.Module                  # forward(x) → logits of the current task (Captum's forward)


def _per_out_unit(t: torch.Tensor) -> torch.Tensor:
    """Σ over every dimension but the first (inputs, kernel): one value per output unit."""
    return t.reshape(t.shape[0], -1).sum(1)


def _per_in_unit(t: torch.Tensor) -> torch.Tensor:
    """Σ over every dimension but the second (outputs, kernel): one value per input unit."""
    return t.transpose(0, 1).reshape(t.shape[1], -1).sum(1)


def activation_abs(h: torch.Tensor) -> torch.Tensor:
    """mean |h_{l,i}| over the batch (and the spatial dimensions of a conv layer)."""
    return h.abs().transpose(0, 1).reshape(h.shape[1], -1).mean(1)


def _zeros(v: LayerView) -> torch.Tensor:
    return torch.zeros(v.weight.shape[0], device=v.weight.device)


def ig(v: LayerView, s: StepView) -> torch.Tensor:
    """IG: Σ_j |∂L/∂W_{l,ij}|."""
    return _per_out_unit(v.grad.abs()) if v.grad is not None else _zeros(v)


def og(v: LayerView, s: StepView) -> torch.Tensor:
    """OG: Σ_k |∂L/∂W_{l+1,ki}|."""
    return _per_in_unit(v.next_grad.abs()) if v.next_grad is not None else _zeros(v)


def cu(v: LayerView, s: StepView) -> torch.Tensor:
    """CU: (Σ_k |W_{l+1,ki}|) · mean|h_{l,i}|."""
    return _per_in_unit(v.next_weight.abs()) * activation_abs(v.activation)


def icu(v: LayerView, s: StepView) -> torch.Tensor:
    """ICU: (Σ_j |W_{l,ij}|) · mean|h_{l,i}|."""
    return _per_out_unit(v.weight.abs()) * activation_abs(v.activation)


def afi(v: LayerView, s: StepView) -> torch.Tensor:
    """AFI: (Σ_j (∂L/∂W_{l,ij})²) · mean|h_{l,i}|."""
    g = v.grad if v.grad is not None else torch.zeros_like(v.weight)
    return _per_out_unit(g.pow(2)) * activation_abs(v.activation)


def _captum(cls, **attribute_kwargs) -> Callable[[LayerView, StepView], torch.Tensor]:
    def measure(v: LayerView, s: StepView) -> torch.Tensor:
        kwargs = {k: (f(s) if callable(f) else f) for k, f in attribute_kwargs.items()}
        attr = cls(s.model, v.module).attribute(s.x, target=s.y, **kwargs)
        return activation_abs(attr.detach())  # mean |attribution| per unit

    measure.__doc__ = f"{cls.__name__} (Captum), mean |attribution| over the batch."
    return measure


def _attribution_measures() -> dict[str, Callable]:
    from captum.attr import InternalInfluence, LayerDeepLift, LayerFeatureAblation, LayerGradientShap

    return {
        "FA": _captum(LayerFeatureAblation),  # unit set to 0: |z_y(x) − z_y(x, h_i = 0)|; one forward per unit
        "II": _captum(InternalInfluence, n_steps=5),                          # baseline None
        "GS": _captum(LayerGradientShap, baselines=lambda s: torch.zeros_like(s.x)),
        "DL": _captum(LayerDeepLift),                                         # baseline None
    }


DIRECT = {"IG": ig, "OG": og, "CU": cu, "ICU": icu, "AFI": afi}
ATTRIBUTION = ("FA", "II", "GS", "DL")
MEASURES = (*DIRECT, *ATTRIBUTION)
NEEDS_ACTIVATIONS = {"CU", "ICU", "AFI"}


def measure(name: str) -> Callable[[LayerView, StepView], torch.Tensor]:
    """The measure function registered under `name` (Captum is imported only for its measures)."""
    return DIRECT[name] if name in DIRECT else _attribution_measures()[name]


def min_max_normalize(u: torch.Tensor) -> torch.Tensor:
    """ũ = (u − min u) / (max u − min u + 1e-8) within a layer."""
    return (u - u.min()) / (u.max() - u.min() + 1e-8)
