"""Dataset files in torchvision's layouts, read with numpy: MNIST-family IDX, CIFAR pickles, SVHN .mat, image sets.

Each reader returns what the torchvision dataset class of the same name would hold, in the same order, without
importing torchvision: `Arrays` (uint8 images (n, C, H, W) and int64 labels) for the array formats, `Images`
(image paths, labels, and whether torchvision's loader converts them to RGB) for the image-file datasets. A missing
file raises `MissingData` (a download may fetch it); a file that is there but wrong (magic number, truncated, shape,
not a pickle, not a .mat file) raises a one-line `DataUnavailableError` naming the file and what was expected.

Layouts under the data folder `root` (torchvision's, so a folder torchvision downloaded into is read as is):
    MNIST, FashionMNIST, KMNIST   <root>/<Class>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]
    EMNIST (split s)              <root>/EMNIST/raw/emnist-<s>-{train,test}-{images-idx3,labels-idx1}-ubyte[.gz]
    CIFAR10                       <root>/cifar-10-batches-py/{data_batch_1..5,test_batch}
    CIFAR100 (fine labels)        <root>/cifar-100-python/{train,test}
    SVHN                          <root>/{train,test}_32x32.mat
    Food101                       <root>/food-101/meta/{train,test}.json, <root>/food-101/images/<class>/<id>.jpg
    Caltech101                    <root>/caltech101/101_ObjectCategories/<category>/image_NNNN.jpg
    EuroSAT                       <root>/eurosat/2750/<class>/*.jpg
    DTD (partition 1)             <root>/dtd/dtd/labels/{train,val,test}1.txt, <root>/dtd/dtd/images/<class>/*.jpg
    Country211                    <root>/country211/{train,valid,test}/<class>/*.jpg
EMNIST images are returned as stored, as torchvision returns them (the IDX files hold them transposed relative to
MNIST's; neither torchvision nor the reference transposes them back).
"""

from __future__ import annotations

import codecs
import gzip
import json
import os
import pickle
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clrepro.errors import DataUnavailableError


class MissingData(DataUnavailableError):
    """A dataset file or folder that is not there (benchmark.download may fetch it)."""

    def __init__(self, path: Path, what: str = "not found") -> None:
        self.path = Path(path)
        super().__init__(f"{path}: {what}")


@dataclass
class Arrays:
    """Images as uint8 (n, C, H, W) and labels as int64 (n,), in the file's order; `where`: the labels' file."""

    x: np.ndarray
    y: np.ndarray
    where: str = ""


@dataclass
class Images:
    """Image files and their labels in torchvision's order; `rgb`: torchvision's loader converts to RGB on load."""

    paths: list[Path]
    y: np.ndarray
    rgb: bool = True
    where: str = ""


def _bad(path: Path, problem: str, expected: str) -> DataUnavailableError:
    return DataUnavailableError(f"{path}: {problem} (expected {expected})")


def _read(path: Path, expected: str) -> bytes:
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise _bad(path, "is a folder", expected) from None
    except OSError as e:
        raise DataUnavailableError(f"{path}: cannot read it ({e.strerror or e})") from None
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise _bad(path, f"not a complete gzip file ({type(e).__name__}: {e})", expected) from None
    return data


def _existing(path: Path) -> Path:
    """The file, or its .gz variant (torchvision downloads the .gz and extracts it beside)."""
    if path.exists():
        return path
    gz = path.with_name(path.name + ".gz")
    if gz.exists():
        return gz
    raise MissingData(path, "not found (nor its .gz)")


# ----- IDX (MNIST, FashionMNIST, KMNIST, EMNIST) ---------------------------------------------------------------

def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes with `ndim` dimensions: magic 0x0000080N, big-endian int32 sizes, the data."""
    kind = "images" if ndim == 3 else "labels"
    expected = f"an IDX {kind} file: magic number 0x{0x800 + ndim:08X}, then {ndim} big-endian sizes and uint8 data"
    data = _read(path, expected)
    magic = int.from_bytes(data[:4].ljust(4, b"\0"), "big")
    if len(data) < 4 or magic != 0x800 + ndim:
        raise _bad(path, f"magic number 0x{magic:08X}", expected)
    header = 4 + 4 * ndim
    if len(data) < header:
        raise _bad(path, f"truncated: {len(data)} bytes, shorter than its {header}-byte header", expected)
    dims = struct.unpack(f">{ndim}I", data[4:header])
    need = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != need:
        what = "truncated" if len(data) < need else "too long"
        raise _bad(path, f"{what}: {len(data)} bytes, its header's {' x '.join(map(str, dims))} {kind} need {need}",
                   expected)
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _idx_pair(images: Path, labels: Path, size: tuple[int, int] = (28, 28)) -> Arrays:
    images, labels = _existing(images), _existing(labels)
    x = read_idx(images, 3)
    if tuple(x.shape[1:]) != size:
        raise _bad(images, f"holds {x.shape[1]} x {x.shape[2]} images", f"{size[0]} x {size[1]} images")
    y = read_idx(labels, 1)
    if len(y) != len(x):
        raise _bad(labels, f"has {len(y)} labels for the {len(x)} images of {images.name}", f"{len(x)} labels")
    return Arrays(x[:, None], y.astype(np.int64), str(labels))


def mnist_family(root: Path, cls: str, train: bool) -> Arrays:
    """MNIST, FashionMNIST or KMNIST (`cls`, torchvision's class name and folder) from `<root>/<cls>/raw/`."""
    raw = root / cls / "raw"
    split = "train" if train else "t10k"
    return _idx_pair(raw / f"{split}-images-idx3-ubyte", raw / f"{split}-labels-idx1-ubyte")


def emnist(root: Path, split: str, train: bool) -> Arrays:
    """EMNIST split `split` (digits, letters, ...) from `<root>/EMNIST/raw/emnist-<split>-{train,test}-*`."""
    raw = root / "EMNIST" / "raw"
    prefix = f"emnist-{split}-{'train' if train else 'test'}"
    return _idx_pair(raw / f"{prefix}-images-idx3-ubyte", raw / f"{prefix}-labels-idx1-ubyte")


# ----- CIFAR python pickles ------------------------------------------------------------------------------------

def _pickle_globals() -> dict[tuple[str, str], object]:
    """The only globals a CIFAR pickle refers to (numpy arrays, Python 2 and 3 pickles): nothing else is loaded."""
    from numpy._core import multiarray, numeric

    ok = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): codecs.encode}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        ok[(module, "_reconstruct")] = multiarray._reconstruct
        ok[(module, "scalar")] = multiarray.scalar
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        ok[(module, "_frombuffer")] = numeric._frombuffer
    return ok


class _DataUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays and plain containers only: a data file never runs code."""

    allowed: dict = {}

    def find_class(self, module: str, name: str):
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which no CIFAR file does") from None


def load_pickle(path: Path, expected: str):
    """A pickle of plain data (dicts, lists, strings, numbers, numpy arrays), as torchvision reads CIFAR (latin1)."""
    import io

    data = _read(path, expected)
    if not _DataUnpickler.allowed:
        _DataUnpickler.allowed = _pickle_globals()
    try:
        return _DataUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as e:  # UnpicklingError, EOFError (truncated), ValueError, ...: the file is not what it should be
        first = (str(e).strip().splitlines() or [""])[0][:120]
        raise _bad(path, f"not a readable pickle ({type(e).__name__}{': ' + first if first else ''})",
                   expected) from None


def _cifar_file(path: Path, label_key: str) -> Arrays:
    expected = f"a CIFAR python batch: a pickled dict with 'data' (n x 3072 uint8) and '{label_key}'"
    if not path.exists():
        raise MissingData(path)
    entry = load_pickle(path, expected)
    if isinstance(entry, dict):  # keys are str (Python 2 files read as latin1) or bytes (re-pickled ones)
        entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
    if not isinstance(entry, dict) or "data" not in entry or label_key not in entry:
        keys = sorted(map(str, entry)) if isinstance(entry, dict) else type(entry).__name__
        raise _bad(path, f"holds {keys}", expected)
    x, y = entry["data"], entry[label_key]
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
        shape = f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}".strip()
        raise _bad(path, f"'data' is {shape}", expected)
    try:
        y = np.asarray(y, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise _bad(path, f"'{label_key}' is not a list of integers", expected) from None
    if len(y) != len(x):
        raise _bad(path, f"has {len(x)} images and {len(y)} labels", expected)
    return Arrays(x.reshape(-1, 3, 32, 32), y, str(path))


def cifar(root: Path, cls: str, train: bool) -> Arrays:
    """CIFAR10 (`labels`) or CIFAR100 (`fine_labels`) from torchvision's extracted python version."""
    if cls == "CIFAR10":
        folder, files, key = root / "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "labels"
        files = files if train else ["test_batch"]
    else:
        folder, files, key = root / "cifar-100-python", ["train" if train else "test"], "fine_labels"
    parts = [_cifar_file(folder / f, key) for f in files]
    where = str(folder / files[0]) if len(files) == 1 else f"{folder}/{{{','.join(files)}}}"
    return Arrays(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]), where)


# ----- SVHN (MATLAB .mat, version 5) ---------------------------------------------------------------------------

def svhn(root: Path, split: str) -> Arrays:
    """SVHN's cropped digits `<root>/<split>_32x32.mat`: X (32, 32, 3, n) uint8, y (n, 1) in 1..10, 10 meaning 0."""
    import scipy.io

    path = root / f"{split}_32x32.mat"
    expected = "SVHN's MATLAB file: X of 32 x 32 x 3 x n uint8 and y of n x 1 labels in 1..10"
    if not path.exists():
        raise MissingData(path)
    try:
        mat = scipy.io.loadmat(path)
    except Exception as e:  # MatReadError, ValueError, OSError on a truncated or foreign file
        first = (str(e).strip().splitlines() or [""])[0][:120]
        raise _bad(path, f"not a readable .mat file ({type(e).__name__}{': ' + first if first else ''})",
                   expected) from None
    x, y = mat.get("X"), mat.get("y")
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise _bad(path, f"X is {getattr(x, 'dtype', None)} {getattr(x, 'shape', None)}", expected)
    if not isinstance(y, np.ndarray) or y.size != x.shape[3]:
        raise _bad(path, f"y has {getattr(y, 'size', 0)} labels for {x.shape[3]} images", expected)
    y = y.astype(np.int64).reshape(-1)
    if len(y) and (y.min() < 1 or y.max() > 10):
        raise _bad(path, f"labels {y.min()}..{y.max()}", expected)
    y[y == 10] = 0
    return Arrays(np.ascontiguousarray(np.transpose(x, (3, 2, 0, 1))), y, str(path))


# ----- image-file datasets -------------------------------------------------------------------------------------

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's


def image_folder(directory: Path) -> Images:
    """torchvision's ImageFolder: class folders in sorted order, files walked recursively in sorted order."""
    if not directory.is_dir():
        raise MissingData(directory, "folder not found")
    classes = sorted(e.name for e in os.scandir(directory) if e.is_dir())
    if not classes:
        raise _bad(directory, "has no class folders", "one folder of images per class")
    paths, labels = [], []
    for label, cls in enumerate(classes):
        for dirpath, _, names in sorted(os.walk(directory / cls, followlinks=True)):
            for name in sorted(names):
                if name.lower().endswith(IMG_EXTENSIONS):
                    paths.append(Path(dirpath) / name)
                    labels.append(label)
    if not paths:
        raise _bad(directory, "has no images", f"image files ({', '.join(IMG_EXTENSIONS)}) in its class folders")
    return Images(paths, np.asarray(labels, dtype=np.int64), where=str(directory))


def food101(root: Path, split: str) -> Images:
    base = root / "food-101"
    meta = base / "meta" / f"{split}.json"
    if not meta.exists():
        raise MissingData(meta)
    expected = "a JSON object mapping each class to its image ids ('class/id')"
    try:
        data = json.loads(_read(meta, expected))
    except (ValueError, UnicodeDecodeError) as e:
        raise _bad(meta, f"not valid JSON ({e})", expected) from None
    if not isinstance(data, dict) or not all(isinstance(v, list) and all(isinstance(s, str) for s in v)
                                             for v in data.values()):
        raise _bad(meta, "is not such an object", expected)
    index = {c: i for i, c in enumerate(sorted(data))}
    paths, labels = [], []
    for cls, ids in data.items():
        paths += [base.joinpath("images", *f"{i}.jpg".split("/")) for i in ids]
        labels += [index[cls]] * len(ids)
    return Images(paths, np.asarray(labels, dtype=np.int64), where=str(meta))


def caltech101(root: Path) -> Images:
    """Categories sorted, BACKGROUND_Google dropped; category c's n entries are image_0001.jpg..image_n.jpg."""
    base = root / "caltech101" / "101_ObjectCategories"
    if not base.is_dir():
        raise MissingData(base, "folder not found")
    categories = [c for c in sorted(os.listdir(base)) if c != "BACKGROUND_Google"]
    paths, labels = [], []
    for label, cat in enumerate(categories):
        n = len(os.listdir(base / cat)) if (base / cat).is_dir() else 0
        paths += [base / cat / f"image_{k:04d}.jpg" for k in range(1, n + 1)]
        labels += [label] * n
    if not paths:
        raise _bad(base, "has no images", "one folder of image_NNNN.jpg files per category")
    # torchvision opens these without converting them to RGB
    return Images(paths, np.asarray(labels, dtype=np.int64), rgb=False, where=str(base))


def dtd(root: Path, split: str, partition: int = 1) -> Images:
    data = root / "dtd" / "dtd"
    listing = data / "labels" / f"{split}{partition}.txt"
    if not listing.exists():
        raise MissingData(listing)
    expected = "one 'class/file.jpg' per line"
    lines = [ln.strip() for ln in _read(listing, expected).decode("utf-8", "replace").splitlines() if ln.strip()]
    pairs = [ln.split("/") for ln in lines]
    bad = next((ln for ln, p in zip(lines, pairs) if len(p) != 2), None)
    if bad is not None:
        raise _bad(listing, f"has the line {bad[:60]!r}", expected)
    index = {c: i for i, c in enumerate(sorted({c for c, _ in pairs}))}
    return Images([data / "images" / c / n for c, n in pairs], np.asarray([index[c] for c, _ in pairs], dtype=np.int64),
                  where=str(listing))


def eurosat(root: Path) -> Images:
    return image_folder(root / "eurosat" / "2750")


def country211(root: Path, split: str) -> Images:
    return image_folder(root / "country211" / split)


def read(cls: str, root: Path, **kw) -> Arrays | Images:
    """What torchvision's `cls(root, **kw)` holds (train/split/partition as its keyword arguments)."""
    train = kw.get("train", True)
    if cls in ("MNIST", "FashionMNIST", "KMNIST"):
        return mnist_family(root, cls, train)
    if cls == "EMNIST":
        return emnist(root, kw["split"], train)
    if cls in ("CIFAR10", "CIFAR100"):
        return cifar(root, cls, train)
    if cls == "SVHN":
        return svhn(root, kw.get("split", "train"))
    if cls == "Food101":
        return food101(root, kw.get("split", "train"))
    if cls == "Caltech101":
        return caltech101(root)
    if cls == "EuroSAT":
        return eurosat(root)
    if cls == "DTD":
        return dtd(root, kw.get("split", "train"))
    if cls == "Country211":
        return country211(root, kw.get("split", "train"))
    raise ValueError(f"no reader for {cls}")


def layout(cls: str, root: Path, **kw) -> str:
    """Where the files of `cls` go under `root`, for messages."""
    split = kw.get("split")
    return {
        "MNIST": f"{root}/MNIST/raw/{{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte[.gz]",
        "FashionMNIST": f"{root}/FashionMNIST/raw/{{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte[.gz]",
        "KMNIST": f"{root}/KMNIST/raw/{{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte[.gz]",
        "EMNIST": f"{root}/EMNIST/raw/emnist-{split}-{{train,test}}-{{images-idx3,labels-idx1}}-ubyte[.gz]",
        "CIFAR10": f"{root}/cifar-10-batches-py/{{data_batch_1..5,test_batch}}",
        "CIFAR100": f"{root}/cifar-100-python/{{train,test}}",
        "SVHN": f"{root}/{{train,test}}_32x32.mat",
        "Food101": f"{root}/food-101/{{meta/{{train,test}}.json,images/<class>/<id>.jpg}}",
        "Caltech101": f"{root}/caltech101/101_ObjectCategories/<category>/image_NNNN.jpg",
        "EuroSAT": f"{root}/eurosat/2750/<class>/*.jpg",
        "DTD": f"{root}/dtd/dtd/{{labels/{{train,val,test}}1.txt,images/<class>/*.jpg}}",
        "Country211": f"{root}/country211/{{train,valid,test}}/<class>/*.jpg",
    }[cls]


def present(cls: str, root: Path, **kw) -> Path | None:
    """The first file or folder of `cls` that is missing under `root` (a cheap check before a run), or None."""
    train = kw.get("train", True)
    split = kw.get("split")
    if cls in ("MNIST", "FashionMNIST", "KMNIST", "EMNIST"):
        raw = root / cls / "raw"
        prefix = (f"emnist-{split}-{'train' if train else 'test'}" if cls == "EMNIST"
                  else ("train" if train else "t10k"))
        candidates = [raw / f"{prefix}-images-idx3-ubyte", raw / f"{prefix}-labels-idx1-ubyte"]
        return next((p for p in candidates if not p.exists() and not p.with_name(p.name + ".gz").exists()), None)
    if cls == "CIFAR10":
        names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
        candidates = [root / "cifar-10-batches-py" / n for n in names]
    elif cls == "CIFAR100":
        candidates = [root / "cifar-100-python" / ("train" if train else "test")]
    elif cls == "SVHN":
        candidates = [root / f"{split or 'train'}_32x32.mat"]
    elif cls == "Food101":
        candidates = [root / "food-101" / "meta" / f"{split or 'train'}.json"]
    elif cls == "Caltech101":
        candidates = [root / "caltech101" / "101_ObjectCategories"]
    elif cls == "EuroSAT":
        candidates = [root / "eurosat" / "2750"]
    elif cls == "DTD":
        candidates = [root / "dtd" / "dtd" / "labels" / f"{split or 'train'}1.txt"]
    elif cls == "Country211":
        candidates = [root / "country211" / (split or "train")]
    else:
        raise ValueError(f"no reader for {cls}")
    return next((p for p in candidates if not p.exists()), None)
