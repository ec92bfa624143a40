"""Before anything is allocated: the model's training state and an algorithm's buffers fit in the device."""

from __future__ import annotations

import os

import torch

from clrepro.errors import ConfigError

# Float32 copies of the weights a run may hold at once: weights, gradients, Adam's two moments, and an
# algorithm's copies of the model (EWC's θ*, LwF's teacher, Flashback's primary model). A lower bound:
# activations come on top.
TRAINING_COPIES = 6


def device_bytes(device: torch.device) -> int | None:
    """The device's memory in bytes (CUDA: the GPU's total; CPU: physical memory); None if unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[1]
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB"


def check_memory(comp, input_shape: tuple[int, ...], device: torch.device) -> None:
    """ConfigError naming the key when the backbone (built on the meta device: no memory, no RNG draw) or an
    algorithm's buffers need more memory than the device has."""
    total = device_bytes(device)
    if total is None:
        return
    state = torch.random.get_rng_state()
    try:
        with torch.device("meta"):
            probe = comp.backbone_cls(input_shape, comp.backbone_cfg)
    finally:
        torch.random.set_rng_state(state)
    params = sum(p.numel() for p in probe.parameters())
    need = params * 4 * TRAINING_COPIES
    if need > total:
        name = getattr(comp.backbone_cls, "registry_name", comp.backbone_cls.__name__)
        raise ConfigError("backbone", f"'{name}' has {params:,} parameters, which need at least {_gib(need)} to "
                          f"train; the {device.type} device has {_gib(total)}", "a smaller backbone")
    for key, nbytes in comp.algorithm_cls.memory_bytes(comp.algorithm_cfg, tuple(input_shape)).items():
        if nbytes + need > total:
            raise ConfigError(key, f"needs at least {_gib(nbytes)} beside the model's {_gib(need)}; the "
                              f"{device.type} device has {_gib(total)}", "a smaller value")
