"""Train-time augmentation of whole batches on their device: RandomCrop with zero padding and RandomHorizontalFlip.

The CIFAR protocols of DER, DER++ and Flashback Learning (Mammoth's) train on
`RandomCrop(32, padding=4) → RandomHorizontalFlip() → ToTensor → Normalize`. Tasks hold their inputs already
normalised, so the padding here is the normalised value of a zero pixel, (0 − mean) / std per channel of the
sample's task: the same images as padding before Normalize, with no per-image PIL loop.

Draws come from the run's own CPU generator, seeded from the run's seed and nothing else, so the same seed gives the
same augmented batches on any device, and the global random stream (batch order, initialisation, replay draws) is
the same with augmentation on or off. Per batch of n: n top offsets, then n left offsets (each uniform in
0..H + 2·padding − crop, as torchvision's RandomCrop.get_params), then n flip draws (flip where U(0, 1) < 0.5).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from clrepro.config.hparams import hp
from clrepro.errors import ConfigError

STREAM = 0x61756776  # separates the augmentation's stream from other uses of the run's seed


@dataclass
class AugmentationConfig:
    """`benchmark.augmentation`: train-time transforms of each training batch (off by default)."""

    crop: int | None = hp(None, low=1, high=4096, doc="RandomCrop size (the inputs' size, e.g. 32 for CIFAR), taken "
                                                      "after zero padding; null: no crop")
    padding: int = hp(0, low=0, high=1024, doc="zero pixels added on every side before the crop (needs crop)")
    hflip: bool = hp(False, doc="RandomHorizontalFlip: each image flipped left-right with probability 0.5")

    def __post_init__(self) -> None:
        if self.padding and self.crop is None:
            raise ConfigError("benchmark.augmentation.padding", f"{self.padding} needs a crop (padding is "
                              "RandomCrop's)", "0 without crop, or set benchmark.augmentation.crop")

    @property
    def active(self) -> bool:
        return self.crop is not None or self.hflip


def augmentation_seed(seed: int) -> int:
    """The augmentation generator's seed: a function of the run's seed only."""
    return int(np.random.SeedSequence([int(seed), STREAM]).generate_state(1, np.uint64)[0])


def crop_flip(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor | None, crop: int | None,
              padding: int, fill: torch.Tensor) -> torch.Tensor:
    """Pad x (n, C, H, W) by `padding` with `fill` ((C,) or (n, C)), take the crop x crop window at (top, left) of each
    image, and mirror it left-right where `flip`; one gather on x's device."""
    n, c, h, w = x.shape
    if padding:
        padded = fill.to(x.device, x.dtype).reshape(-1, c, 1, 1).expand(n, c, h + 2 * padding, w + 2 * padding).clone()
        padded[:, :, padding:padding + h, padding:padding + w] = x
    else:
        padded = x
    if crop is None:
        rows = torch.arange(h, device=x.device).expand(n, h)
        cols = torch.arange(w, device=x.device).expand(n, w)
    else:
        steps = torch.arange(crop, device=x.device)
        rows = top.to(x.device).view(n, 1) + steps
        cols = left.to(x.device).view(n, 1) + steps
    if flip is not None:
        cols = torch.where(flip.to(x.device).view(n, 1), cols.flip(1), cols)
    out = padded[torch.arange(n, device=x.device).view(n, 1, 1), :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()  # advanced indices first: (n, rows, cols, C) → (n, C, rows, cols)


class Augmentation:
    """The run's train-time augmentation: `augment(x, task_id)` for a training or replay batch.

    `task_id` is an int or per-sample ids: a sample is padded with its own task's normalised zero. A model copy
    (Flashback's old model, a deep copy of a replay buffer) shares this object: it is the run's, not the model's.
    """

    def __init__(self, cfg: AugmentationConfig, seed: int, channels: int) -> None:
        self.cfg = cfg
        self.generator = torch.Generator().manual_seed(augmentation_seed(seed))
        self.channels = channels
        self._fill: dict[int, torch.Tensor] = {}
        self._on: dict[tuple, torch.Tensor] = {}  # the fills, moved to a device once

    def __deepcopy__(self, memo) -> "Augmentation":
        return self

    def add_task(self, task) -> None:
        """Remember task t's padding value: Normalize applied to a zero pixel, (0 − mean) / std per channel."""
        from clrepro.data.sources import normalize

        if task.id in self._fill or not task.mean:
            return
        zero = torch.zeros(1, self.channels, 1, 1, dtype=task.train.x.dtype)
        mean, std = tuple(task.mean), tuple(task.std)
        if len(mean) == 1 and self.channels > 1:
            mean, std = mean * self.channels, std * self.channels
        self._fill[task.id] = normalize(zero, mean, std).view(self.channels)
        self._on.clear()

    def fill(self, task_id: int | torch.Tensor, device: torch.device) -> torch.Tensor:
        """The padding value of each sample: (C,) for one task, (n, C) for per-sample task ids."""
        if isinstance(task_id, int):
            if (task_id, device) not in self._on:
                self._on[(task_id, device)] = self._fill.get(task_id, torch.zeros(self.channels)).to(device)
            return self._on[(task_id, device)]
        if ("table", device) not in self._on:
            table = torch.zeros(max(self._fill, default=0) + 1, self.channels)
            for t, v in self._fill.items():
                table[t] = v
            self._on[("table", device)] = table.to(device)
        return self._on[("table", device)][task_id]

    def draw(self, n: int, h: int, w: int) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """This batch's crop offsets (top, left) and flips, from the run's augmentation generator (CPU)."""
        c = self.cfg
        top = left = flip = None
        if c.crop is not None:
            top = torch.randint(0, h + 2 * c.padding - c.crop + 1, (n,), generator=self.generator)
            left = torch.randint(0, w + 2 * c.padding - c.crop + 1, (n,), generator=self.generator)
        if c.hflip:
            flip = torch.rand(n, generator=self.generator) < 0.5
        return top, left, flip

    def __call__(self, x: torch.Tensor, task_id: int | torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        top, left, flip = self.draw(n, h, w)
        return crop_flip(x, top, left, flip, self.cfg.crop, self.cfg.padding, self.fill(task_id, x.device))


def check_fits(cfg: AugmentationConfig, shape: tuple[int, ...] | None) -> None:
    """ConfigError when the crop is not the inputs' size (C, H, W) (the crop gives the model its input)."""
    if shape is None or cfg.crop is None:
        return
    if len(shape) != 3:
        raise ConfigError("benchmark.augmentation.crop", f"needs image inputs (C, H, W); this benchmark's are {shape}",
                          "null")
    _, h, w = shape
    if cfg.crop != h or cfg.crop != w:
        raise ConfigError("benchmark.augmentation.crop", f"{cfg.crop} does not match the {h} x {w} inputs (the crop "
                          "gives the model its input)", str(h) if h == w else "null (square inputs only)")


def for_benchmark(benchmark, seed: int) -> Augmentation | None:
    """The run's augmentation from `benchmark.augmentation`, or None when it is off (the data path is unchanged)."""
    cfg = getattr(benchmark.cfg, "augmentation", None)
    if cfg is None or not cfg.active:
        return None
    shape = benchmark.input_shape()
    check_fits(cfg, shape)
    return Augmentation(cfg, seed, shape[0])
