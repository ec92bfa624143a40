"""Combined-20: folder sources from tiny fake PNGs, shapes, labels, splits, lazy per-task loading, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clrepro.config.hparams import build, read_mapping
from clrepro.data import benchmarks, sources
from clrepro.data.benchmarks import Combined, CombinedConfig, build_benchmark
from clrepro.data.sources import COMBINED20, COMBINED_SOURCES, load_combined
from clrepro.errors import ConfigError, DataUnavailableError

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "benchmark"


def _write(folder: Path, n: int, size: tuple[int, int], mode: str, value) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new(mode, size, value(i)).save(folder / f"{i:03d}.png")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """notmnist: 3 grayscale 28x28 classes (10 train / 2 test each); trafficsigns: 2 RGB 40x30 classes (5 / 2)."""
    for k, cls in enumerate("ABC"):
        # class k's grey level is 50*k + i, so a label is recoverable from its pixels
        _write(tmp_path / "notmnist" / "train" / cls, 10, (28, 28), "L", lambda i, k=k: 50 * k + i)
        _write(tmp_path / "notmnist" / "test" / cls, 2, (28, 28), "L", lambda i, k=k: 50 * k + 20 + i)
    for k, cls in enumerate(["0", "1"]):
        _write(tmp_path / "trafficsigns" / "train" / cls, 5, (40, 30), "RGB", lambda i, k=k: (200 * k, 10 * i, 30))
        _write(tmp_path / "trafficsigns" / "test" / cls, 2, (40, 30), "RGB", lambda i, k=k: (200 * k, 0, 60))
    load_combined.cache_clear()
    return tmp_path


def _bench(root: Path, names: list[str], **kw) -> Combined:
    return Combined(build(CombinedConfig, {"sources": names, "num_tasks": len(names), "root": str(root), **kw},
                          "benchmark"))


def test_folder_source_shapes_labels_and_gray_to_three_channels(root):
    d = load_combined("notmnist", str(root))
    assert d.train_x.shape == (30, 3, 32, 32) and d.test_x.shape == (6, 3, 32, 32)
    assert d.train_x.dtype == torch.float32 and 0.0 <= float(d.train_x.min()) and float(d.train_x.max()) <= 1.0
    assert d.num_classes == 3 and d.train_y.tolist() == [0] * 10 + [1] * 10 + [2] * 10
    assert d.test_y.tolist() == [0, 0, 1, 1, 2, 2]
    assert torch.equal(d.train_x[:, 0], d.train_x[:, 1]) and torch.equal(d.train_x[:, 0], d.train_x[:, 2])
    # a constant image stays constant through the resize; its grey level is 50 * class + index
    assert torch.allclose(d.train_x[13], torch.full((3, 32, 32), 53 / 255))
    assert d.mean == (0.4254,) * 3 and d.std == (0.4501,) * 3

    rgb = load_combined("trafficsigns", str(root))
    assert rgb.train_x.shape == (10, 3, 32, 32) and rgb.num_classes == 2
    assert torch.allclose(rgb.train_x[7, :, 5, 5], torch.tensor([200, 20, 30]) / 255)  # class 1, image 2
    assert rgb.mean == (0.4850, 0.4560, 0.4060)


def test_native_size_and_one_channel(root):
    d = load_combined("notmnist", str(root), size=28, channels=1)
    assert d.train_x.shape == (30, 1, 28, 28) and d.mean == (0.4254,)
    assert torch.allclose(d.train_x[25], torch.full((1, 28, 28), 105 / 255))
    bench = _bench(root, ["notmnist"], size=28, channels=1)
    assert bench.input_shape() == (1, 28, 28) and bench.task(1).train.x.shape[1:] == (1, 28, 28)


def test_tasks_have_their_own_classes_and_normalised_splits(root):
    bench = _bench(root, ["notmnist", "trafficsigns"])
    assert bench.num_tasks == 2 and bench.input_shape() == (3, 32, 32)
    t1, t2 = bench.task(1), bench.task(2)
    assert (t1.num_classes, t2.num_classes) == (3, 2) and bench.num_classes(2) == 2
    assert t1.classes == (0, 1, 2) and t2.classes == (0, 1)
    assert (len(t1.train), len(t1.val), len(t1.test)) == (27, 3, 6)
    assert (len(t2.train), len(t2.val), len(t2.test)) == (9, 1, 4)
    assert set(t2.train.y.tolist()) | set(t2.val.y.tolist()) == {0, 1}
    raw = load_combined("notmnist", str(root))
    assert torch.allclose(t1.test.x, (raw.test_x - 0.4254) / 0.4501)
    assert bench.task(1) is t1  # the shared per-process task cache


def test_validation_split_is_random_split_with_seed_42(root):
    bench = _bench(root, ["notmnist"])
    t1 = bench.task(1)
    tr, va = torch.utils.data.random_split(range(30), [0.9, 0.1], generator=torch.Generator().manual_seed(42))
    pool_y = load_combined("notmnist", str(root)).train_y
    assert t1.train.y.tolist() == pool_y[tr.indices].tolist() and t1.val.y.tolist() == pool_y[va.indices].tolist()
    # grey level 50*k + i identifies each pool image: the split picks exactly those pool indices, in order
    levels = (t1.val.x[:, 0, 0, 0] * 0.4501 + 0.4254) * 255
    assert torch.allclose(levels, torch.tensor([50.0 * (j // 10) + j % 10 for j in va.indices]), atol=1e-3)
    benchmarks._TASK_CACHE.clear()
    load_combined.cache_clear()
    again = _bench(root, ["notmnist"]).task(1)
    assert again is not t1 and torch.equal(again.val.x, t1.val.x) and torch.equal(again.train.y, t1.train.y)
    # lengths follow torch's random_split (floor, remainder round-robin), not rounding
    assert [len(i) for i in sources.random_split_indices(15, (0.9, 0.1))] == [14, 1]


def test_tasks_load_lazily(root, monkeypatch):
    loaded = []
    real = sources.load_combined

    def spy(name, *a):
        loaded.append(name)
        return real(name, *a)

    monkeypatch.setattr(benchmarks, "load_combined", spy)
    bench = _bench(root, ["notmnist", "trafficsigns", "facescrub"])
    assert bench.input_shape() == (3, 32, 32) and loaded == []
    bench.task(2)
    assert loaded == ["trafficsigns"]
    with pytest.raises(DataUnavailableError):  # facescrub has no folder: only task 3 fails
        bench.task(3)


def test_missing_folder_is_one_line_naming_it(root):
    with pytest.raises(DataUnavailableError) as e:
        load_combined("facescrub", str(root))
    msg = str(e.value)
    assert "\n" not in msg and "source 'facescrub' not found" in msg
    assert f"{root / 'facescrub'}/{{train,test}}/<class>/" in msg and "docs/benchmarks.md, Combined-20" in msg
    (root / "kannadamnist" / "train" / "0").mkdir(parents=True)
    with pytest.raises(DataUnavailableError, match="has no images in train/") as e:
        load_combined("kannadamnist", str(root))
    assert "\n" not in str(e.value)


def test_torchvision_source_without_torchvision_is_one_line(root, no_torchvision):
    bench = _bench(root, ["notmnist", "svhn"])
    assert bench.task(1).num_classes == 3  # folder sources need no torchvision
    with pytest.raises(DataUnavailableError) as e:
        bench.task(2)
    msg = str(e.value)
    assert "source 'svhn'" in msg and "pip install 'clrepro[vision]'" in msg and "\n" not in msg


def test_bad_sources_and_num_tasks_are_config_errors(root):
    with pytest.raises(ConfigError) as e:
        build(CombinedConfig, {"sources": ["mnist", "imagenet"]}, "benchmark")
    msg = str(e.value)
    assert msg.startswith("benchmark.sources: 'imagenet' is not allowed (allowed: cifar10, cifar100, mnist, svhn")
    assert "country211" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match=r"benchmark\.sources: 'imagenet' is not allowed \(allowed: cifar10"):
        Combined(CombinedConfig(sources=["imagenet"], num_tasks=1))
    with pytest.raises(ConfigError) as e:
        Combined(CombinedConfig(sources=["mnist", "svhn"], num_tasks=3))
    assert str(e.value) == "benchmark.num_tasks: 3 exceeds the 2 sources of benchmark.sources (allowed: 1..2)"
    with pytest.raises(ConfigError, match=r"benchmark\.channels: 2 is not allowed \(allowed: 1, 3\)"):
        build(CombinedConfig, {"channels": 2}, "benchmark")


def test_configs_and_the_table():
    assert len(COMBINED20) == 20 and sum(s.classes for s in COMBINED_SOURCES.values()) == 858
    c20 = build_benchmark(read_mapping(CONFIGS / "combined20.yaml", "benchmark"))
    assert isinstance(c20, Combined) and c20.cfg.sources == list(COMBINED20) and c20.num_tasks == 20
    assert c20.input_shape() == (3, 32, 32) and CombinedConfig().sources == list(COMBINED20)
    s5 = build_benchmark(read_mapping(CONFIGS / "combined_simple5.yaml", "benchmark"))
    assert s5.cfg.sources == ["mnist", "notmnist", "fashionmnist", "kmnist", "signlanguagemnist"]
    assert s5.input_shape() == (1, 28, 28)
    assert COMBINED_SOURCES["emnistletters"].label_offset == -1 and COMBINED_SOURCES["signlanguagemnist"].classes == 24
    assert "svhn" in sources.SOURCES and sources.SOURCES["mnist"] is sources.mnist  # existing sources unchanged


def test_conform_images_resizes_like_torch_bilinear_antialias():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(20, 24), dtype=np.uint8)
    x = sources.conform_images([Image.fromarray(arr)], 32, 3, gray=True)
    ref = torch.nn.functional.interpolate(torch.from_numpy(arr).float().div(255)[None, None], size=(32, 32),
                                          mode="bilinear", align_corners=False, antialias=True)
    assert x.shape == (1, 3, 32, 32) and torch.allclose(x[:, :1], ref) and torch.equal(x[:, 1], x[:, 2])
