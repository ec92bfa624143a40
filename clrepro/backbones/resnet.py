"""ImageNet-style ResNet-18 as CLArena builds it (docs/benchmarks.md), plain and HAT-masked per output channel."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from clrepro.backbones.base import Backbone, MaskedBackbone, MaskedParam
from clrepro.backbones.masks import HATMasks
from clrepro.config.hparams import hp
from clrepro.registry import BACKBONES

STAGE_CHANNELS = (64, 128, 256, 512)  # the stem has STAGE_CHANNELS[0]; read at construction (tests narrow it)
STAGE_STRIDES = (1, 2, 2, 2)  # stage conv2x keeps the size (the maxpool already halved it); the others halve
BLOCKS_PER_STAGE = 2

Masks = dict[str, torch.Tensor] | None
Recorder = Callable[[str, torch.Tensor], None] | None


@dataclass
class ResNetConfig:
    batch_norm: bool = hp(False, doc="BatchNorm2d after each of the 17 weighted convs, before the mask "
                                     "(CLResNet default true; papers false)")
    protect_shortcuts: bool = hp(False, bug="B9", doc="masked variant: also protect the 1x1 shortcut convs "
                                 "(rows owned by the block's conv2 units, inputs by the block's input units); "
                                 "false = reference parity, shortcuts drift unprotected")


def _gate(h: torch.Tensor, mask: Masks, layer: str) -> torch.Tensor:
    """h ⊙ m_l per channel; m_l is (C,) for the whole batch or (N, C), one mask per sample (replay)."""
    if mask is None:
        return h
    m = mask[layer]
    return h * (m.view(1, -1, 1, 1) if m.dim() == 1 else m.view(m.shape[0], -1, 1, 1))


def _conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d | None, x: torch.Tensor) -> torch.Tensor:
    h = conv(x)
    return h if bn is None else bn(h)


def _mix(keep: torch.Tensor, own: torch.Tensor, main: torch.Tensor) -> torch.Tensor:
    """M^u ⊙ own + (1 − M^u) ⊙ main per output channel: the backup's channels where u's stored mask is 1."""
    k = keep.view(1, -1, 1, 1)
    return k * own + (1 - k) * main


class _BasicBlock(nn.Module):
    """conv1 3x3/1 → [BN] → ⊙ m1 → ReLU; conv2 3x3/stride → [BN] → + shortcut → ⊙ m2 → ReLU."""

    def __init__(self, name: str, prev: str, in_ch: int, ch: int, stride: int, batch_norm: bool) -> None:
        super().__init__()
        self.name1, self.name2, self.prev = f"{name}.conv1", f"{name}.conv2", prev
        self.conv1 = nn.Conv2d(in_ch, ch, 3, stride=1, padding=1, bias=False)
        self.conv2 = nn.Conv2d(ch, ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(ch) if batch_norm else None
        self.bn2 = nn.BatchNorm2d(ch) if batch_norm else None
        # CLArena's `identity_downsample`: never masked, never in weighted_layer_names (bug B9)
        self.shortcut = nn.Conv2d(in_ch, ch, 1, stride=stride, bias=False) if in_ch != ch or stride != 1 else None
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()  # modules, so that Captum's DeepLift rescales through them

    def forward(self, x: torch.Tensor, mask: Masks = None, record: Recorder = None) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        h = self.conv1(x)
        if self.bn1 is not None:
            h = self.bn1(h)
        h = self.relu1(_gate(h, mask, self.name1))
        if record is not None:
            record(self.name1, h)
        h = self.conv2(h)
        if self.bn2 is not None:
            h = self.bn2(h)
        h = self.relu2(_gate(h + identity, mask, self.name2))  # the mask sits after the residual add
        if record is not None:
            record(self.name2, h)
        return h

    def forward_with_backup(self, x: torch.Tensor, backup: "_BasicBlock", stored: dict[str, torch.Tensor],
                            mask: Masks = None) -> torch.Tensor:
        """This block with u's channels from `backup` (the same block of the plain backup ResNet).

        conv1 → [BN] and conv2 → [BN] each mix M^u ⊙ backup + (1 − M^u) ⊙ main over their output channels.
        The 1x1 shortcut's output channels are conv2's units, so it mixes with conv2's M^u on the block input
        (an identity shortcut is the same in both nets). Then + shortcut, ⊙ m2, ReLU as `forward`. The routing
        is the same whether or not the shortcut is protected (`protect_shortcuts`): it is the architecture.
        """
        k1, k2 = stored[self.name1], stored[self.name2]
        h = _mix(k1, _conv_bn(backup.conv1, backup.bn1, x), _conv_bn(self.conv1, self.bn1, x))
        h = self.relu1(_gate(h, mask, self.name1))
        h = _mix(k2, _conv_bn(backup.conv2, backup.bn2, h), _conv_bn(self.conv2, self.bn2, h))
        identity = x if self.shortcut is None else _mix(k2, backup.shortcut(x), self.shortcut(x))
        return self.relu2(_gate(h + identity, mask, self.name2))


class _ResNet18Layers(nn.Module):
    """The shared body; parameter paths mirror the layer names ("conv3x.0.conv2" → `conv3x.0.conv2.weight`)."""

    def __init__(self, in_channels: int, cfg: ResNetConfig) -> None:
        super().__init__()
        stem = STAGE_CHANNELS[0]
        self.conv1 = nn.Conv2d(in_channels, stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem) if cfg.batch_norm else None
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer_units: dict[str, int] = {"conv1": stem}
        self.stage_names = [f"conv{s}x" for s in range(2, 2 + len(STAGE_CHANNELS))]
        prev, in_ch = "conv1", stem
        for stage, ch, stride in zip(self.stage_names, STAGE_CHANNELS, STAGE_STRIDES):
            blocks = nn.ModuleList()
            for b in range(BLOCKS_PER_STAGE):
                block = _BasicBlock(f"{stage}.{b}", prev, in_ch, ch, stride if b == 0 else 1, cfg.batch_norm)
                blocks.append(block)
                self.layer_units[block.name1] = ch
                self.layer_units[block.name2] = ch
                prev, in_ch = block.name2, ch
            setattr(self, stage, blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.output_dim = in_ch

    def blocks(self) -> Iterator[tuple[str, _BasicBlock]]:
        for stage in self.stage_names:
            for b, block in enumerate(getattr(self, stage)):
                yield f"{stage}.{b}", block

    def forward(self, x: torch.Tensor, mask: Masks = None, record: Recorder = None) -> torch.Tensor:
        h = self.conv1(x)
        if self.bn1 is not None:
            h = self.bn1(h)
        h = self.relu(_gate(h, mask, "conv1"))
        if record is not None:
            record("conv1", h)
        h = self.maxpool(h)
        for _, block in self.blocks():
            h = block(h, mask, record)
        return self.avgpool(h).flatten(1)

    def forward_with_backup(self, x: torch.Tensor, backup: "_ResNet18Layers", stored: dict[str, torch.Tensor],
                            mask: Masks = None) -> torch.Tensor:
        """`forward` with every masked layer's channels of M^u (`stored`) taken from `backup`'s layer."""
        h = _mix(stored["conv1"], _conv_bn(backup.conv1, backup.bn1, x), _conv_bn(self.conv1, self.bn1, x))
        h = self.maxpool(self.relu(_gate(h, mask, "conv1")))
        for (_, block), (_, twin) in zip(self.blocks(), backup.blocks()):
            h = block.forward_with_backup(h, twin, stored, mask)
        return self.avgpool(h).flatten(1)


@BACKBONES.register("resnet18")
class ResNet18(Backbone):
    """ImageNet-style ResNet-18 (7x7/2 stem, maxpool, 4x2 basic blocks, global avg-pool) → 512 features."""

    Config = ResNetConfig

    def __init__(self, input_shape: tuple[int, ...], cfg: ResNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.body = _ResNet18Layers(int(input_shape[0]), cfg)
        self.output_dim = self.body.output_dim

    def forward(self, x: torch.Tensor, mask=None) -> torch.Tensor:
        return self.body(x)


@BACKBONES.register("hat_resnet18")
class HATMaskResNet18(MaskedBackbone):
    """ResNet-18 with a HAT gate per output channel on all 17 weighted convs; 1x1 shortcuts unmasked."""

    Config = ResNetConfig
    plain_twin = "resnet18"

    def __init__(self, input_shape: tuple[int, ...], cfg: ResNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.body = _ResNet18Layers(int(input_shape[0]), cfg)
        self.output_dim = self.body.output_dim
        self.layer_units = dict(self.body.layer_units)
        self.layer_names = list(self.layer_units)
        self.hat = HATMasks(self.layer_units)

    def masked_parameters(self) -> Iterator[MaskedParam]:
        b = self.body
        yield MaskedParam("body.conv1.weight", b.conv1.weight, "conv1", None, "weight")
        for name, block in b.blocks():
            yield MaskedParam(f"body.{name}.conv1.weight", block.conv1.weight, block.name1, block.prev, "weight")
            yield MaskedParam(f"body.{name}.conv2.weight", block.conv2.weight, block.name2, block.name1, "weight")
            if self.cfg.protect_shortcuts and block.shortcut is not None:
                yield MaskedParam(f"body.{name}.shortcut.weight", block.shortcut.weight, block.name2, block.prev,
                                  "weight", shortcut=True)

    def forward(self, x: torch.Tensor, mask: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        return self.body(x, mask, self._record)

    def plain_copy(self) -> ResNet18:
        """A plain, unmasked ResNet-18 holding this one's current weights, shortcuts included (AmnesiacHAT's
        backup backbone). Built on the meta device first, so making a copy draws nothing from the global RNG."""
        stem = self.body.conv1
        with torch.device("meta"):
            twin = ResNet18((stem.in_channels, 1, 1), self.cfg)
        twin.to_empty(device=stem.weight.device)
        twin.body.load_state_dict(self.body.state_dict())
        return twin.train(self.training)

    def forward_with_backup(self, x: torch.Tensor, backup: ResNet18, backup_mask: dict[str, torch.Tensor],
                            mask: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Layer-parallel forward through a backup B^u (AmnesiacHAT's learning step).

        At each of the 17 masked convs l the stream becomes y = M^u_l ⊙ (conv → [BN])^{B^u}_l(h) +
        (1 − M^u_l) ⊙ (conv → [BN])^{main}_l(h), per output channel, then the block's order: conv1 → ⊙ m → ReLU;
        conv2 → + shortcut → ⊙ m → ReLU. A 1x1 shortcut's output channels are its block's conv2 units, so it is
        routed with conv2's M^u: backup shortcut on u's conv2 channels, main shortcut on the rest (as the
        reference routes it). This holds in both `protect_shortcuts` modes; what the mode changes is whether the
        shortcut is a masked parameter (protected, compensated and repair-gated under conv2's units × the block
        input's units) or drifts unowned (B9). Either way Δθ^t records it, so deletion takes it back.
        """
        return self.body.forward_with_backup(x, backup.body, backup_mask, mask)
