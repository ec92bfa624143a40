"""The run's device runtime: plain torch for full-precision single-device runs, Lightning Fabric otherwise.

A full-precision run on one CPU or CUDA device needs nothing from Fabric but a device, `loss.backward()` and
the callback loop, and importing Fabric costs several seconds (it pulls in torch._dynamo, torchmetrics,
scipy.signal and the TensorBoard logger). `Runtime` gives those few things with Fabric's interface; mixed or
half precision, `mps` and `auto` go through Fabric, which owns autocast, gradient scaling and device choice.
"""

from __future__ import annotations

import contextlib
from typing import Iterable

import torch

from clrepro.errors import UserError

PLAIN_PRECISIONS = ("32-true",)
PLAIN_ACCELERATORS = ("cpu", "cuda", "gpu")


class Runtime:
    """Fabric's interface for one full-precision device: device, setup_optimizers, autocast, backward, call."""

    def __init__(self, device: torch.device, callbacks: Iterable = ()) -> None:
        self.device = device
        self._callbacks = list(callbacks)

    def setup_optimizers(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        return optimizer

    def autocast(self):
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def call(self, hook: str, **kwargs) -> None:
        """Call `hook(**kwargs)` on every callback that has it (Fabric.call's semantics)."""
        for cb in self._callbacks:
            method = getattr(cb, hook, None)
            if callable(method):
                method(**kwargs)


def _single_device(devices) -> int | None:
    """The device index of `devices` = 1 or [i]; None when it asks for more than one device."""
    if devices in (1, "1"):
        return 0
    if isinstance(devices, (list, tuple)) and len(devices) == 1 and isinstance(devices[0], int):
        return devices[0]
    return None


def make_runtime(trainer, callbacks: Iterable = ()):
    """A Runtime for full precision on one cpu/cuda device, else a Lightning Fabric; one-line errors either way."""
    index = _single_device(trainer.devices)
    if trainer.precision in PLAIN_PRECISIONS and trainer.accelerator in PLAIN_ACCELERATORS and index is not None:
        if trainer.accelerator == "cpu":
            return Runtime(torch.device("cpu"), callbacks)
        if not torch.cuda.is_available():
            raise UserError(f"trainer.accelerator={trainer.accelerator}: CUDA is not available on this machine "
                            "(allowed here: cpu)")
        if index >= torch.cuda.device_count():
            raise UserError(f"trainer.devices={trainer.devices}: this machine has {torch.cuda.device_count()} CUDA "
                            f"device(s) (allowed: 1 or [0..{torch.cuda.device_count() - 1}])")
        return Runtime(torch.device("cuda", index), callbacks)
    return _fabric(trainer, callbacks)


def _fabric(t, callbacks: Iterable):
    from lightning.fabric import Fabric
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return Fabric(accelerator=t.accelerator, devices=t.devices, precision=t.precision, callbacks=list(callbacks))
    except (ValueError, RuntimeError, TypeError, MisconfigurationException) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"trainer.accelerator/devices/precision ({t.accelerator}, {t.devices}, {t.precision}): "
                        f"{first}") from None


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch (all devices) as Lightning's seed_everything does, and ask for deterministic
    kernels (warn only)."""
    import os
    import random

    import numpy as np

    os.environ["PL_GLOBAL_SEED"] = str(seed)  # what Lightning's workers read
    os.environ["PL_SEED_WORKERS"] = "1"
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # every device's generator
    if deterministic:
        deterministic_kernels()


def deterministic_kernels() -> None:
    """torch.use_deterministic_algorithms(True, warn_only=True) without its import of torch._inductor.config.

    The public call also sets Inductor's `deterministic` flag, which only torch.compile reads, and importing that
    config pulls in torch._dynamo and sympy (about 4 s and 60 MiB per process). clrepro compiles nothing, so the
    kernel switch alone is set unless Inductor is already loaded (then the public call, which costs nothing more).
    """
    import sys

    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None or "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        setter(True, warn_only=True)
