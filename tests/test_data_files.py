"""Dataset files as users have them: synthetic files in torchvision's exact layouts, read back exactly, run end to end
through `clrepro run` (benchmark.root, $CLREPRO_DATA, the default folder, benchmark.download), and one-line errors."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clrepro.data import formats, sources
from clrepro.errors import DataUnavailableError

ROOT = Path(__file__).resolve().parents[1]
N_TRAIN, N_TEST = 60, 20


# ----- writers: the on-disk formats, byte for byte -------------------------------------------------------------
def idx_bytes(a: np.ndarray) -> bytes:
    """IDX: 0x00 0x00, type 0x08 (unsigned byte), the number of dimensions, big-endian int32 sizes, the data."""
    return struct.pack(">BBBB", 0, 0, 0x08, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape) + a.astype(np.uint8).tobytes()


def write_idx(path: Path, a: np.ndarray, gz: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = idx_bytes(a)
    if gz:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def py2_pickle(obj) -> bytes:
    """A protocol-2 pickle as Python 2's cPickle wrote CIFAR's files: str as byte strings (read back with latin1),
    numpy arrays through numpy.core.multiarray._reconstruct with their raw bytes as a str."""
    out = [b"\x80\x02"]

    def s(text: str | bytes) -> None:
        raw = text.encode("latin1") if isinstance(text, str) else text
        out.append(b"U" + bytes([len(raw)]) + raw if len(raw) < 256 else b"T" + struct.pack("<I", len(raw)) + raw)

    def dump(o) -> None:
        if isinstance(o, dict):
            out.append(b"}(")
            for k, v in o.items():
                dump(k), dump(v)
            out.append(b"u")
        elif isinstance(o, list):
            out.append(b"](")
            for v in o:
                dump(v)
            out.append(b"e")
        elif isinstance(o, (str, bytes)):
            s(o)
        elif isinstance(o, int):
            out.append(b"J" + struct.pack("<i", o))
        elif isinstance(o, np.ndarray):
            assert o.dtype == np.uint8
            out.append(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + b"J\x00\x00\x00\x00\x85")
            s("b"), out.append(b"\x87R(J\x01\x00\x00\x00")
            for d in o.shape:
                dump(int(d))
            out.append(b"\x86" if o.ndim == 2 else b"t")
            out.append(b"cnumpy\ndtype\n"), s("u1"), out.append(b"J\x00\x00\x00\x00J\x01\x00\x00\x00\x87R")
            out.append(b"(J\x03\x00\x00\x00"), s("|"), out.append(b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffJ\x00\x00\x00\x00tb")
            out.append(b"\x89"), s(o.tobytes()), out.append(b"tb")
        else:
            raise TypeError(type(o))

    dump(obj)
    return b"".join(out) + b"."


def images(rng, n: int, c: int, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, c, h, w), dtype=np.uint8)


def labels(n: int, classes: int, offset: int = 0) -> np.ndarray:
    return (np.arange(n) % classes + offset).astype(np.int64)


def write_mnist_family(root: Path, folder: str, x_tr, y_tr, x_te, y_te, prefix=("train", "t10k"), gz=False) -> None:
    raw = root / folder / "raw"
    for split, x, y in ((prefix[0], x_tr, y_tr), (prefix[1], x_te, y_te)):
        write_idx(raw / f"{split}-images-idx3-ubyte", x[:, 0], gz)
        write_idx(raw / f"{split}-labels-idx1-ubyte", y, gz)


def write_cifar10(root: Path, x_tr, y_tr, x_te, y_te) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    per = len(y_tr) // 5
    for i in range(5):
        part = slice(i * per, (i + 1) * per)
        entry = {"batch_label": f"training batch {i + 1} of 5", "labels": [int(v) for v in y_tr[part]],
                 "data": x_tr[part].reshape(per, 3072), "filenames": [f"img_{j}.png" for j in range(per)]}
        # batch 1 as Python 2 wrote it (the files users download); the others re-pickled by Python 3 and numpy 2
        data = py2_pickle(entry) if i == 0 else pickle.dumps(entry, protocol=min(2 + i, 5))
        (folder / f"data_batch_{i + 1}").write_bytes(data)
    (folder / "test_batch").write_bytes(py2_pickle({"batch_label": "testing batch 1 of 1", "labels": [int(v) for v in y_te],
                                                    "data": x_te.reshape(len(y_te), 3072)}))
    (folder / "batches.meta").write_bytes(py2_pickle({"label_names": [f"c{i}" for i in range(10)]}))


def write_cifar100(root: Path, x_tr, y_tr, x_te, y_te) -> None:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, x, y in (("train", x_tr, y_tr), ("test", x_te, y_te)):
        (folder / name).write_bytes(py2_pickle({"filenames": ["f"] * len(y), "batch_label": name,
                                                "fine_labels": [int(v) for v in y],
                                                "coarse_labels": [int(v) // 5 for v in y],
                                                "data": x.reshape(len(y), 3072)}))


def write_svhn(root: Path, split: str, x, y) -> None:
    import scipy.io

    root.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(root / f"{split}_32x32.mat", {"X": np.ascontiguousarray(x.transpose(2, 3, 1, 0)),
                                                    "y": np.where(y == 0, 10, y).astype(np.uint8).reshape(-1, 1)})


def write_png(path: Path, chw: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(chw.transpose(1, 2, 0)).save(path, format="PNG")  # lossless, whatever the file is named


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Every torchvision-format dataset as small synthetic files under one root (60 train / 20 test images for the
    array formats; a few 8 x 8 RGB PNGs per class for the image sets); returns (root, the arrays written)."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    w = {}
    for folder in ("MNIST", "FashionMNIST", "KMNIST"):
        w[folder] = (images(rng, N_TRAIN, 1, 28, 28), labels(N_TRAIN, 10), images(rng, N_TEST, 1, 28, 28),
                     labels(N_TEST, 10))
        write_mnist_family(root, folder, *w[folder], gz=folder == "KMNIST")  # KMNIST as the .gz files
    for split, classes, offset in (("digits", 10, 0), ("letters", 26, 1)):
        w[f"EMNIST-{split}"] = arrays = (images(rng, N_TRAIN, 1, 28, 28), labels(N_TRAIN, classes, offset),
                                         images(rng, N_TEST, 1, 28, 28), labels(N_TEST, classes, offset))
        write_mnist_family(root, "EMNIST", *arrays, prefix=(f"emnist-{split}-train", f"emnist-{split}-test"))
    w["CIFAR10"] = (images(rng, N_TRAIN, 3, 32, 32), labels(N_TRAIN, 10), images(rng, N_TEST, 3, 32, 32),
                    labels(N_TEST, 10))
    write_cifar10(root, *w["CIFAR10"])
    w["CIFAR100"] = (images(rng, 200, 3, 32, 32), labels(200, 100), images(rng, N_TEST, 3, 32, 32),
                     labels(N_TEST, 100))
    write_cifar100(root, *w["CIFAR100"])
    w["SVHN"] = (images(rng, N_TRAIN, 3, 32, 32), labels(N_TRAIN, 10), images(rng, N_TEST, 3, 32, 32),
                 labels(N_TEST, 10))
    write_svhn(root, "train", *w["SVHN"][:2])
    write_svhn(root, "test", *w["SVHN"][2:])
    # image sets: class names whose sorted order differs from their creation order
    pics = {}
    for i, cls in enumerate(["b_cls", "a_cls", "c_cls"]):
        for split in ("train", "valid", "test"):
            for j in range(2):
                arr = images(rng, 1, 3, 8, 8)[0]
                write_png(root / "country211" / split / cls / f"{j}.png", arr)
                pics[("country211", split, cls, j)] = arr
        for j in range(3):
            arr = images(rng, 1, 3, 8, 8)[0]
            write_png(root / "eurosat" / "2750" / cls / f"{cls}_{j}.png", arr)
            pics[("eurosat", cls, j)] = arr
    w["pics"] = pics
    return root, w


def exact(x: torch.Tensor, u8: np.ndarray) -> bool:
    return torch.equal(x, torch.from_numpy(u8.astype(np.float32)) / 255.0)


# ----- each source reads back exactly what was written ---------------------------------------------------------
def test_mnist_cifar_sources_read_back_exactly(data):
    root, w = data
    for name, key in (("mnist", "MNIST"), ("cifar10", "CIFAR10"), ("cifar100", "CIFAR100")):
        d = sources.SOURCES[name](str(root), False)
        x_tr, y_tr, x_te, y_te = w[key]
        assert exact(d.train_x, x_tr) and exact(d.test_x, x_te), name
        assert d.train_y.tolist() == y_tr.tolist() and d.test_y.tolist() == y_te.tolist(), name
        assert d.train_x.shape[1:] == ((1, 28, 28) if name == "mnist" else (3, 32, 32))


def test_combined_array_sources_read_back_exactly(data):
    root, w = data
    cases = {"fashionmnist": "FashionMNIST", "kmnist": "KMNIST", "mnist": "MNIST", "emnistdigits": "EMNIST-digits",
             "emnistletters": "EMNIST-letters", "svhn": "SVHN", "cifar10": "CIFAR10", "cifar100": "CIFAR100"}
    for name, key in cases.items():
        x_tr, y_tr, x_te, y_te = w[key]
        gray = x_tr.shape[1] == 1
        d = sources.load_combined(name, str(root), False, size=x_tr.shape[-1], channels=1 if gray else 3)
        assert exact(d.train_x, x_tr) and exact(d.test_x, x_te), name  # EMNIST as stored, as torchvision gives it
        offset = -1 if name == "emnistletters" else 0  # letters 1..26 become 0..25
        assert d.train_y.tolist() == (y_tr + offset).tolist() and d.test_y.tolist() == (y_te + offset).tolist(), name
    # Combined-20's 32 x 32 x 3: MNIST resized (bilinear, antialiased) and repeated over 3 channels
    d = sources.load_combined("mnist", str(root), False)
    ref = torch.nn.functional.interpolate(torch.from_numpy(w["MNIST"][0].astype(np.float32)) / 255.0, size=(32, 32),
                                          mode="bilinear", align_corners=False, antialias=True)
    assert d.train_x.shape == (N_TRAIN, 3, 32, 32) and torch.equal(d.train_x, ref.expand(-1, 3, -1, -1))


def test_image_set_sources_follow_torchvisions_order(data, tmp_path):
    root, w = data
    pics = w["pics"]
    classes = ["a_cls", "b_cls", "c_cls"]  # sorted, as ImageFolder
    d = sources.load_combined("country211", str(root), False, size=8)
    assert d.train_y.tolist() == [0, 0, 1, 1, 2, 2] and d.val_y.tolist() == [0, 0, 1, 1, 2, 2]
    assert exact(d.val_x[3], pics[("country211", "valid", "b_cls", 1)])
    assert exact(d.test_x[4], pics[("country211", "test", "c_cls", 0)])
    whole = [pics[("eurosat", c, j)] for c in classes for j in range(3)]  # the whole set in ImageFolder's order
    d = sources.load_combined("eurosat", str(root), False, size=8, test_fraction=0.34)
    pool, test = sources.random_split_indices(9, (0.66, 0.34))  # no test split: the whole set, split with seed 42
    assert [int(v) for v in d.test_y] == [i // 3 for i in test.tolist()]
    assert all(exact(d.test_x[k], whole[i]) for k, i in enumerate(test.tolist()))
    # Food101, Caltech101, DTD: their listing files and folder layouts
    food = tmp_path / "food-101"
    meta = {"train": {"pizza": ["pizza/11", "pizza/12"], "apple_pie": ["apple_pie/7"]}, "test": {"pizza": ["pizza/13"],
            "apple_pie": ["apple_pie/8"]}}
    rng = np.random.default_rng(1)
    written = {}
    for split, m in meta.items():
        (food / "meta").mkdir(parents=True, exist_ok=True)
        (food / "meta" / f"{split}.json").write_text(json.dumps(m))
        for ids in m.values():
            for i in ids:
                written[i] = images(rng, 1, 3, 8, 8)[0]
                write_png(food / "images" / f"{i}.jpg", written[i])  # a PNG named .jpg: PIL reads it by content
    for cat, n in (("Faces", 2), ("BACKGROUND_Google", 1), ("accordion", 1)):
        for k in range(1, n + 1):
            written[(cat, k)] = images(rng, 1, 3, 8, 8)[0]
            write_png(tmp_path / "caltech101" / "101_ObjectCategories" / cat / f"image_{k:04d}.jpg", written[(cat, k)])
    lab = tmp_path / "dtd" / "dtd" / "labels"
    lab.mkdir(parents=True)
    for split, lines in (("train", ["zig/a.jpg", "bub/b.jpg"]), ("val", ["bub/c.jpg", "zig/d.jpg"]),
                         ("test", ["zig/e.jpg", "bub/f.jpg"])):
        (lab / f"{split}1.txt").write_text("\n".join(lines) + "\n")
        for line in lines:
            written[line] = images(rng, 1, 3, 8, 8)[0]
            write_png(tmp_path / "dtd" / "dtd" / "images" / line, written[line])
    f = sources.load_combined("food101", str(tmp_path), False, size=8)
    assert f.train_y.tolist() == [1, 1, 0] and f.test_y.tolist() == [1, 0]  # json order; labels by sorted class
    assert exact(f.train_x[2], written["apple_pie/7"]) and exact(f.test_x[0], written["pizza/13"])
    c = formats.caltech101(tmp_path)
    assert [p.name for p in c.paths] == ["image_0001.jpg", "image_0002.jpg", "image_0001.jpg"]
    assert c.y.tolist() == [0, 0, 1] and not c.rgb  # 'Faces' < 'accordion' (case-sensitive), background dropped
    t = sources.load_combined("dtd", str(tmp_path), False, size=8)
    assert t.train_y.tolist() == [1, 0] and t.val_y.tolist() == [0, 1] and exact(t.test_x[1], written["bub/f.jpg"])


def test_embedded_mnist_exported_as_idx_reads_back_identical(tmp_path):
    """benchmarks/parity/export_data.py writes mnist_embedded as IDX files; the IDX reader gives it back bit for bit."""
    sys.path.insert(0, str(ROOT / "benchmarks" / "parity"))
    try:
        from export_data import export
    finally:
        sys.path.remove(str(ROOT / "benchmarks" / "parity"))
    export(tmp_path)
    got, ref = sources.mnist(str(tmp_path), False), sources.mnist_embedded()
    for a in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(got, a), getattr(ref, a)), a
    assert got.train_x.shape == (4000, 1, 28, 28) and got.test_x.shape == (1000, 1, 28, 28)


def test_download_goes_through_torchvision_only_when_a_file_is_missing(tmp_path, monkeypatch):
    """benchmark.download: torchvision is imported lazily, only for a missing file, and its download is then read
    natively; a fake torchvision records the call and writes the files as torchvision's MNIST would."""
    import types

    calls = []
    rng = np.random.default_rng(3)
    arrays = (images(rng, 12, 1, 28, 28), labels(12, 10), images(rng, 4, 1, 28, 28), labels(4, 10))

    class MNIST:
        def __init__(self, root, train=True, download=False):
            calls.append((root, train, download))
            write_mnist_family(Path(root), "MNIST", *arrays)

    fake = types.ModuleType("torchvision")
    fake.datasets = types.SimpleNamespace(MNIST=MNIST)
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", fake.datasets)
    d = sources.mnist(str(tmp_path / "fresh"), True)
    assert calls == [(str(tmp_path / "fresh"), True, True)]  # once: after it, every file is there
    assert exact(d.train_x, arrays[0]) and d.test_y.tolist() == arrays[3].tolist()
    calls.clear()
    sources.mnist.cache_clear()
    sources.mnist(str(tmp_path / "fresh"), True)
    assert calls == []  # present: never downloaded again


# ----- one-line errors -----------------------------------------------------------------------------------------
def _one_line(fn) -> str:
    with pytest.raises(DataUnavailableError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 600, msg
    return msg


def _mnist_root(tmp_path: Path) -> Path:
    rng = np.random.default_rng(5)
    write_mnist_family(tmp_path, "MNIST", images(rng, 6, 1, 28, 28), labels(6, 10), images(rng, 2, 1, 28, 28),
                       labels(2, 10))
    return tmp_path


def test_corrupt_idx_files_are_one_line_naming_the_file(tmp_path):
    raw = _mnist_root(tmp_path) / "MNIST" / "raw"
    images_file, labels_file = raw / "train-images-idx3-ubyte", raw / "train-labels-idx1-ubyte"
    good = images_file.read_bytes()
    load = lambda: sources.mnist(str(tmp_path), False)  # noqa: E731
    images_file.write_bytes(b"\x00\x00\x08\x01" + good[4:])
    msg = _one_line(load)
    assert msg.startswith(f"source 'mnist': {images_file}: magic number 0x00000801 (expected an IDX images file: "
                          "magic number 0x00000803")
    images_file.write_bytes(good[:-100])
    assert f"{images_file}: truncated: {len(good) - 100} bytes, its header's 6 x 28 x 28 images need {len(good)}" \
        in _one_line(load)
    write_idx(images_file, np.zeros((6, 32, 32), np.uint8))
    assert f"{images_file}: holds 32 x 32 images (expected 28 x 28 images)" in _one_line(load)
    images_file.write_bytes(good)
    write_idx(labels_file, np.zeros(5, np.uint8))
    assert f"{labels_file}: has 5 labels for the 6 images of train-images-idx3-ubyte" in _one_line(load)
    write_idx(labels_file, np.array([0, 1, 2, 3, 4, 12], np.uint8))
    assert f"{labels_file}: labels 0..12 outside 0..9" in _one_line(load)
    labels_file.unlink()
    labels_file.with_name(labels_file.name + ".gz").write_bytes(gzip.compress(idx_bytes(np.zeros(6, np.uint8)))[:-9])
    assert f"{labels_file}.gz: not a complete gzip file" in _one_line(load)


def test_corrupt_cifar_and_svhn_files_are_one_line(data, tmp_path):
    src_root, w = data
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    (folder / "test").write_bytes((src_root / "cifar-100-python" / "test").read_bytes())
    train = folder / "train"
    load = lambda: sources.cifar100(str(tmp_path), False)  # noqa: E731
    train.write_bytes(b"\x00not a pickle at all")
    assert f"source 'cifar100': {train}: not a readable pickle (UnpicklingError" in _one_line(load)
    train.write_bytes((src_root / "cifar-100-python" / "train").read_bytes()[:5000])
    assert f"{train}: not a readable pickle" in _one_line(load)  # truncated
    marker = tmp_path / "ran"
    train.write_bytes(pickle.dumps({"data": os.system, "fine_labels": []}))
    assert "refers to posix.system, which no CIFAR file does" in _one_line(load).replace("nt.system", "posix.system")

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    train.write_bytes(pickle.dumps({"data": Evil(), "fine_labels": []}))
    _one_line(load)
    assert not marker.exists()  # a data file never runs code
    train.write_bytes(pickle.dumps({"data": np.zeros((4, 1024), np.uint8), "fine_labels": [0, 1, 2, 3]}))
    assert f"{train}: 'data' is uint8 (4, 1024) (expected a CIFAR python batch: a pickled dict with 'data' " \
           "(n x 3072 uint8) and 'fine_labels')" in _one_line(load)
    train.write_bytes(pickle.dumps({"data": np.zeros((4, 3072), np.uint8), "labels": [0, 1, 2, 3]}))
    assert f"{train}: holds ['data', 'labels']" in _one_line(load)  # a CIFAR-10 batch where CIFAR-100's belongs
    svhn = tmp_path / "train_32x32.mat"
    svhn.write_bytes(b"MATLAB 5.0 MAT-file, truncated")
    assert f"source 'svhn': {svhn}: not a readable .mat file" in _one_line(
        lambda: sources.load_combined("svhn", str(tmp_path), False))


def test_missing_files_say_where_and_how_to_get_them(tmp_path, no_torchvision):
    empty = tmp_path / "empty"
    msg = _one_line(lambda: sources.mnist(str(empty), False))
    assert msg == (f"source 'mnist': {empty}/MNIST/raw/train-images-idx3-ubyte not found (expected torchvision's "
                   f"MNIST files at {empty}/MNIST/raw/{{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte[.gz]; set "
                   "benchmark.root or CLREPRO_DATA to the folder that holds them, or benchmark.download=true)")
    msg = _one_line(lambda: sources.cifar10(str(empty), True))  # download allowed, torchvision not importable
    assert msg.startswith(f"source 'cifar10': {empty}/cifar-10-batches-py/data_batch_1 not found, and downloading it "
                          "needs torchvision, which is not importable here (ImportError): pip install 'clrepro[vision]'")
    assert f"{empty}/cifar-10-batches-py/{{data_batch_1..5,test_batch}}" in msg


# ----- the user's whole path, through `clrepro run` ------------------------------------------------------------
def _run(args: list[str], capsys) -> tuple[int, list[str]]:
    """`clrepro run --quiet ARGS trainer.threads=1` through the CLI's entry point; (exit code, stderr lines)."""
    from clrepro.cli.main import main

    capsys.readouterr()
    code = main(["run", "--quiet", *args, "trainer.threads=1"])
    return code, capsys.readouterr().err.strip().splitlines()


def _acc(folder: Path) -> np.ndarray:
    from clrepro.metrics.io import read_acc_matrix

    return read_acc_matrix(folder / "acc.csv")


def test_cli_permuted_mnist_from_benchmark_root(data, tmp_path, capsys, monkeypatch):
    root, _ = data
    monkeypatch.delenv("CLREPRO_DATA", raising=False)
    out = tmp_path / "pmnist"
    code, err = _run(["finetuning_pmnist20", f"benchmark.root={root}", "benchmark.download=false",
                      "benchmark.num_tasks=2", "trainer.epochs=1", "trainer.batch_size=16", "backbone.hidden=[16]",
                      "metrics=[AA]", "--out", str(out)], capsys)
    assert code == 0, err
    acc = _acc(out)
    assert acc.shape == (2, 2) and np.isfinite(acc[1]).all()
    assert f"root: {root}" in (out / "config.yaml").read_text()


def test_cli_split_cifar10_der_with_augmentation_from_clrepro_data(data, tmp_path, capsys, monkeypatch):
    root, _ = data
    monkeypatch.setenv("CLREPRO_DATA", str(root))
    out = tmp_path / "scifar"
    code, err = _run(["der_scifar10", "backbone=mlp", "backbone.hidden=[16]", "backbone.batch_norm=false",
                      "benchmark.num_tasks=2", "trainer.epochs=1", "trainer.batch_size=4", "--out", str(out)], capsys)
    assert code == 0, err
    config = (out / "config.yaml").read_text()
    assert ("  root: null\n  download: true\n  normalization: mammoth\n  augmentation:\n    crop: 32\n    padding: 4\n"
            "    hflip: true\n") in config
    acc = _acc(out)
    assert acc.shape == (2, 2) and np.isfinite(acc[1]).all()


def test_split_cifar_normalisation_is_clarenas_by_default_and_mammoths_on_request(data):
    """Split CIFAR-10/100 normalise with CLArena's shared CIFAR constants unless `normalization: mammoth`, which
    takes Mammoth's per-dataset ones (DER, DER++, Flashback); the crop's padding follows the constants used."""
    from clrepro.data.augment import Augmentation, AugmentationConfig
    from clrepro.data.benchmarks import build_benchmark
    from clrepro.errors import ConfigError

    root, w = data
    for source, key, mean, std in (("cifar10", "CIFAR10", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2615)),
                                   ("cifar100", "CIFAR100", (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))):
        raw = torch.from_numpy(w[key][2].astype(np.float32)) / 255.0  # the test images of the files, as ToTensor
        node = {"name": "split", "source": source, "root": str(root), "download": False, "num_tasks": 1,
                "classes_per_task": 2 if source == "cifar10" else 5, "val_fraction": 0.0}
        ref, mam = (build_benchmark({**node, "normalization": n}).task(1) for n in ("source", "mammoth"))
        keep = torch.isin(torch.from_numpy(w[key][3]), torch.tensor(ref.classes))
        m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
        assert torch.equal(mam.test.x, (raw[keep] - m) / s), source
        cm, cs = torch.tensor(sources.CIFAR_MEAN).view(1, 3, 1, 1), torch.tensor(sources.CIFAR_STD).view(1, 3, 1, 1)
        assert torch.equal(ref.test.x, (raw[keep] - cm) / cs), source
        assert (mam.mean, mam.std) == (mean, std)
        aug = Augmentation(AugmentationConfig(crop=32, padding=4), seed=1, channels=3)
        aug.add_task(mam)
        assert torch.allclose(aug.fill(1, torch.device("cpu")), -torch.tensor(mean) / torch.tensor(std))
    with pytest.raises(ConfigError, match="benchmark.normalization.*'mammoth' has no constants for source 'mnist'"):
        build_benchmark({"name": "split", "source": "mnist", "normalization": "mammoth"})
    with pytest.raises(ConfigError, match="benchmark.normalization"):
        build_benchmark({"name": "split", "source": "cifar10", "normalization": "imagenet"})


def test_cli_errors_are_one_line_exit_2_before_training(data, tmp_path, capsys, monkeypatch):
    """The default folder (~/.cache/clrepro/data under $HOME), a missing file, a corrupt one: one line, exit 2, no
    run folder left behind."""
    root, _ = data
    home = tmp_path / "home"
    monkeypatch.delenv("CLREPRO_DATA", raising=False)
    monkeypatch.setenv("HOME", str(home))
    code, err = _run(["finetuning_pmnist20", "benchmark.download=false", "--out", str(tmp_path / "a")], capsys)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: source 'mnist': {home}/.cache/clrepro/data/MNIST/raw/train-images-idx3-ubyte "
                             "not found (expected torchvision's MNIST files")
    bad = tmp_path / "bad"
    (bad / "cifar-10-batches-py").mkdir(parents=True)
    for f in (root / "cifar-10-batches-py").iterdir():
        (bad / "cifar-10-batches-py" / f.name).write_bytes(f.read_bytes())
    (bad / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"garbage")
    code, err = _run(["der_scifar10", "backbone=mlp", f"benchmark.root={bad}", "--out", str(tmp_path / "b")], capsys)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: source 'cifar10': {bad}/cifar-10-batches-py/data_batch_3: not a readable "
                             "pickle (UnpicklingError")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.skipif(sources.torchvision_problem() is not None, reason="torchvision is not importable here")
def test_torchvision_reads_the_same_files_the_same_way(data):
    """Where torchvision imports (the vision extra), its own dataset classes read these files exactly as clrepro does."""
    from torchvision import datasets

    root, _ = data
    for cls, kw in (("MNIST", {}), ("FashionMNIST", {}), ("EMNIST", {"split": "letters"})):  # (KMNIST: .gz only)
        for train in (True, False):  # (CIFAR is left out: torchvision checks md5 sums synthetic files cannot match)
            ds = getattr(datasets, cls)(str(root), train=train, **kw)
            mine = formats.read(cls, root, train=train, **kw)
            assert np.array_equal(ds.data.numpy(), mine.x[:, 0]) and np.array_equal(ds.targets.numpy(), mine.y)
    ds = datasets.SVHN(str(root), split="test")
    mine = formats.read("SVHN", root, split="test")
    assert np.array_equal(ds.data, mine.x) and np.array_equal(ds.labels, mine.y)
    ds = datasets.Country211(str(root), split="valid")
    mine = formats.read("Country211", root, split="valid")
    assert [Path(p) for p, _ in ds.samples] == mine.paths and [y for _, y in ds.samples] == mine.y.tolist()
