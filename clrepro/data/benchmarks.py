"""Continual-learning benchmarks (Permuted, Split, Combined) over image sources, built as per-task tensors."""

from __future__ import annotations

import dataclasses
import json
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from clrepro.config.hparams import hp
from clrepro.data.augment import AugmentationConfig, check_fits
from clrepro.data.sources import (COMBINED20, COMBINED_SOURCES, MAMMOTH_CONSTANTS, NORMALIZATIONS, SOURCES,
                                  SourceData, constants, load_combined, normalize, validation_split)
from clrepro.data.task import Split, Task
from clrepro.errors import ConfigError
from clrepro.limits import INT64_MAX, MAX_TASKS
from clrepro.registry import BENCHMARKS


_TASK_CACHE: OrderedDict[tuple, Task] = OrderedDict()
TASK_CACHE_BYTES = 512 * 2**20  # per process: a sweep worker builds each task once, not once per run
_CACHING = [True]


@contextmanager
def single_pass():
    """Within it, tasks are built but not cached: the process trains on each task once (a lone run without
    references), so a cached task would only hold its train split until the run ends and raise peak RSS."""
    _CACHING.append(False)
    try:
        yield
    finally:
        _CACHING.pop()


def release_task_cache() -> None:
    """Drop every cached task: a process that has finished its last run frees the data before plotting."""
    import gc

    _TASK_CACHE.clear()
    gc.collect()  # the engine's reference cycles still hold the tensors of the last task otherwise
    return_freed_memory()


def return_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc's malloc_trim): without it glibc keeps the freed tasks' pages,
    and the plots that follow add their memory on top of training's peak instead of reusing it."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # not glibc (macOS, musl): nothing to trim
        pass


def _nbytes(task: Task) -> int:
    return sum(s.x.element_size() * s.x.nelement() + s.y.element_size() * s.y.nelement()
               for s in (task.train, task.val, task.test))


class Benchmark:
    """A sequence of tasks; `task(t)` gives task t (1-based) as normalised CPU tensors, cached per process."""

    Config: type

    def __init__(self, cfg) -> None:
        type(self).check_config(cfg)
        self.cfg = cfg
        key = dataclasses.asdict(cfg)
        key.pop("augmentation", None)  # train-time only: the tasks are the same
        if "root" in key:  # the data folder it resolves to ($CLREPRO_DATA may change within a process)
            from clrepro.data.sources import _data_root

            key["root"] = _data_root(cfg.root)
        self._key = (type(self).__name__, json.dumps(key, sort_keys=True))

    @classmethod
    def check_config(cls, cfg) -> None:
        """Cross-field checks of the validated hyperparameters, run when the config is validated (before any
        data is loaded or any training step); ConfigError naming the key."""

    def task(self, t: int) -> Task:
        """Task t, built once per process (read-only: runs share the tensors) within TASK_CACHE_BYTES."""
        key = (*self._key, t)
        if key in _TASK_CACHE:
            _TASK_CACHE.move_to_end(key)
            return _TASK_CACHE[key]
        task = self.build_task(t)
        size = _nbytes(task)
        if _CACHING[-1] and size <= TASK_CACHE_BYTES // 4:
            _TASK_CACHE[key] = task
            while sum(_nbytes(v) for v in _TASK_CACHE.values()) > TASK_CACHE_BYTES:
                _TASK_CACHE.popitem(last=False)
        return task

    @property
    def data(self) -> SourceData:
        return SOURCES[self.cfg.source](self.cfg.root, self.cfg.download)

    def check_data(self) -> None:
        """Before training: the data is there (one line naming the missing or corrupt file if not). Permuted and
        Split load their source now; Combined looks for every task's files and loads each when its task starts."""
        self.data

    @property
    def num_tasks(self) -> int:
        return self.cfg.num_tasks

    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.data.train_x.shape[1:])

    def num_classes(self, t: int) -> int:
        raise NotImplementedError

    def build_task(self, t: int) -> Task:
        raise NotImplementedError

    def _splits(self, x_pool, y_pool, x_test, y_test) -> tuple[Split, Split, Split]:
        tr, va = validation_split(len(y_pool), self.cfg.val_fraction)
        return Split(x_pool[tr], y_pool[tr]), Split(x_pool[va], y_pool[va]), Split(x_test, y_test)


@dataclass
class PermutedConfig:
    source: str = hp("mnist_embedded", choices=tuple(SOURCES), doc="image source (see `clrepro list sources`)")
    num_tasks: int = hp(5, low=1, high=MAX_TASKS, doc="number of permutations (tasks)")
    val_fraction: float = hp(0.1, low=0.0, high=0.5, doc="validation share of the train pool (seed 42)")
    permutation_seeds: list[int] | None = hp(None, low=0, high=INT64_MAX,
                                             doc="per-task permutation seeds; default t-1 (docs/benchmarks.md)")
    task1_default_seed_parity: bool = hp(True, doc="a seed of 0 leaves the generator at torch's default seed, "
                                                   "as the reference does for task 1; false seeds it with 0",
                                         bug="PMNIST task 1")
    numpy_permutation_seed: int | None = hp(None, low=0, high=2**32 - 1, doc=(
        "set: task t's permutation is the t-th draw of one np.random.RandomState(seed).permutation(H·W), as "
        "Avalanche's PermutedMNIST(seed=...) (permutation_seeds and task1_default_seed_parity unused); null: "
        "torch permutations from permutation_seeds"))
    root: str | None = hp(None, doc="data folder for torchvision sources (default $CLREPRO_DATA or ~/.cache)")
    download: bool = hp(True, doc="let torchvision download a missing source (never for embedded sources)")
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig, metadata={
        "doc": "train-time RandomCrop (zero padding) and RandomHorizontalFlip of each batch; off by default"})


@BENCHMARKS.register("permuted")
class Permuted(Benchmark):
    """Permuted: every task is the whole source with its own fixed pixel permutation (10 classes each)."""

    Config = PermutedConfig

    @classmethod
    def check_config(cls, cfg: PermutedConfig) -> None:
        seeds = cfg.permutation_seeds
        if seeds is not None and len(seeds) < cfg.num_tasks:
            raise ConfigError("benchmark.permutation_seeds", f"has {len(seeds)} seeds for {cfg.num_tasks} tasks",
                              f"at least {cfg.num_tasks} seeds")
        if seeds is not None and len(set(seeds[:cfg.num_tasks])) < cfg.num_tasks:
            raise ConfigError("benchmark.permutation_seeds", "repeats a seed, so two tasks would be the same "
                              "permutation", "distinct seeds")
        from clrepro.data.sources import SOURCE_SHAPES

        check_fits(cfg.augmentation, SOURCE_SHAPES.get(cfg.source))
        if seeds is not None and cfg.numpy_permutation_seed is not None:
            raise ConfigError("benchmark.numpy_permutation_seed", "is set together with permutation_seeds",
                              "one of the two (null the other)")

    def num_classes(self, t: int) -> int:
        return self.data.num_classes

    def permutation(self, t: int) -> torch.Tensor:
        """Task t's permutation of the flattened first channel (the reference's Permute transform)."""
        h, w = self.data.train_x.shape[-2:]
        if self.cfg.numpy_permutation_seed is not None:  # Avalanche: one RandomState, one draw per task in order
            rng = np.random.RandomState(self.cfg.numpy_permutation_seed)
            for _ in range(t):
                perm = rng.permutation(h * w)
            return torch.from_numpy(perm).long()
        seed = self.cfg.permutation_seeds[t - 1] if self.cfg.permutation_seeds is not None else t - 1
        g = torch.Generator()
        if seed or not self.cfg.task1_default_seed_parity:
            g.manual_seed(seed)
        return torch.randperm(h * w, generator=g)

    def _permute(self, x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        first = x[:, 0].reshape(n, h * w)[:, perm].reshape(n, 1, h, w)
        return torch.cat([first, x[:, 1:]], dim=1) if c > 1 else first

    def build_task(self, t: int) -> Task:
        if not 1 <= t <= self.num_tasks:
            raise ValueError(f"task {t} out of 1..{self.num_tasks}")
        d, perm = self.data, self.permutation(t)
        pool = normalize(self._permute(d.train_x, perm), d.mean, d.std)
        test = normalize(self._permute(d.test_x, perm), d.mean, d.std)
        train, val, test = self._splits(pool, d.train_y, test, d.test_y)
        return Task(t, d.num_classes, train, val, test, tuple(range(d.num_classes)), d.mean, d.std)


@dataclass
class SplitConfig:
    source: str = hp("mnist_embedded", choices=tuple(SOURCES), doc="image source (see `clrepro list sources`)")
    num_tasks: int = hp(5, low=1, high=MAX_TASKS, doc="number of tasks")
    classes_per_task: int = hp(2, low=1, high=100_000, doc="consecutive classes of `class_order` per task")
    class_order: list[int] | None = hp(None, low=0, unique=True, doc="class order before splitting; default 0..C-1")
    val_fraction: float = hp(0.1, low=0.0, high=0.5, doc="validation share of each task's train pool (seed 42)")
    root: str | None = hp(None, doc="data folder for torchvision sources (default $CLREPRO_DATA or ~/.cache)")
    download: bool = hp(True, doc="let torchvision download a missing source (never for embedded sources)")
    normalization: str = hp("source", choices=NORMALIZATIONS, doc="per-channel Normalize constants: the source's "
                            "(CLArena's; one pair for both CIFARs) or `mammoth` (Mammoth's per-dataset CIFAR-10 and "
                            "CIFAR-100 pairs, the DER and Flashback protocols)")
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig, metadata={
        "doc": "train-time RandomCrop (zero padding) and RandomHorizontalFlip of each batch; off by default"})


@BENCHMARKS.register("split")
class SplitClasses(Benchmark):
    """Split: the source's classes cut into disjoint groups, one group per task, labels remapped to 0..C_t-1."""

    Config = SplitConfig

    @classmethod
    def check_config(cls, cfg: SplitConfig) -> None:
        from clrepro.data.sources import SOURCE_CLASSES, SOURCE_SHAPES

        check_fits(cfg.augmentation, SOURCE_SHAPES.get(cfg.source))
        if cfg.normalization == "mammoth" and cfg.source not in MAMMOTH_CONSTANTS:
            raise ConfigError("benchmark.normalization", f"'mammoth' has no constants for source '{cfg.source}'",
                              f"'source', or a source of {', '.join(MAMMOTH_CONSTANTS)}")
        classes = SOURCE_CLASSES.get(cfg.source)
        if cfg.class_order is not None:
            if classes is not None and max(cfg.class_order, default=0) >= classes:
                bad = next(c for c in cfg.class_order if c >= classes)
                raise ConfigError("benchmark.class_order", f"class {bad} does not exist in '{cfg.source}'",
                                  f"0..{classes - 1}")
        total = len(cfg.class_order) if cfg.class_order is not None else classes
        if total is not None and cfg.num_tasks * cfg.classes_per_task > total:
            what = "benchmark.class_order" if cfg.class_order is not None else f"'{cfg.source}'"
            raise ConfigError("benchmark.num_tasks", f"{cfg.num_tasks} tasks x {cfg.classes_per_task} classes "
                              f"exceed the {total} classes of {what}", f"num_tasks <= {total // cfg.classes_per_task}")

    def _order(self) -> list[int]:
        return list(self.cfg.class_order) if self.cfg.class_order is not None else list(range(self.data.num_classes))

    def classes(self, t: int) -> list[int]:
        order, k = self._order(), self.cfg.classes_per_task
        if self.cfg.num_tasks * k > len(order):
            raise ConfigError("benchmark.num_tasks", f"{self.cfg.num_tasks} tasks x {k} classes exceed the "
                              f"{len(order)} classes of '{self.cfg.source}'",
                              f"num_tasks <= {len(order) // k}")
        return order[(t - 1) * k: t * k]

    def num_classes(self, t: int) -> int:
        return len(self.classes(t))

    def build_task(self, t: int) -> Task:
        if not 1 <= t <= self.num_tasks:
            raise ValueError(f"task {t} out of 1..{self.num_tasks}")
        d, cls = self.data, self.classes(t)
        lookup = torch.full((d.num_classes,), -1, dtype=torch.int64)
        lookup[torch.tensor(cls)] = torch.arange(len(cls))
        tr_keep = lookup[d.train_y] >= 0
        te_keep = lookup[d.test_y] >= 0
        mean, std = constants(self.cfg.source, self.cfg.normalization, d)
        pool = normalize(d.train_x[tr_keep], mean, std)
        test = normalize(d.test_x[te_keep], mean, std)
        train, val, test = self._splits(pool, lookup[d.train_y[tr_keep]], test, lookup[d.test_y[te_keep]])
        return Task(t, len(cls), train, val, test, tuple(cls), mean, std)


@dataclass
class CombinedConfig:
    sources: list[str] = hp(list(COMBINED20), choices=tuple(COMBINED_SOURCES),
                            doc="one source per task, in order (default: the 20 of docs/benchmarks.md#combined-20)")
    num_tasks: int = hp(20, low=1, high=MAX_TASKS,
                        doc="number of tasks: the first num_tasks sources (at most len(sources))")
    val_fraction: float = hp(0.1, low=0.0, high=0.5, doc="validation share of each train pool (random_split, "
                                                          "seed 42); DTD and Country211 use their official val")
    test_fraction: float = hp(0.1, low=0.0, high=0.5, doc="test share for sources without a test split "
                                                           "(caltech101, eurosat; random_split, seed 42)")
    size: int = hp(32, low=1, high=4096, doc="every input is resized to size x size when it is not already")
    channels: int = hp(3, choices=(1, 3), doc="3: grayscale sources repeated over 3 channels; 1: grayscale")
    root: str | None = hp(None, doc="data folder (default $CLREPRO_DATA or ~/.cache/clrepro/data); folder sources "
                                    "live in <root>/<source>/{train,test}/<class>/")
    download: bool = hp(True, doc="let torchvision download a missing source (never for folder sources)")
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig, metadata={
        "doc": "train-time RandomCrop (zero padding) and RandomHorizontalFlip of each batch; off by default"})


@BENCHMARKS.register("combined")
class Combined(Benchmark):
    """Combined: task t is the whole of source t with its own C_t classes; only task t's source is loaded for it."""

    Config = CombinedConfig

    @classmethod
    def check_config(cls, cfg: CombinedConfig) -> None:
        unknown = [s for s in cfg.sources if s not in COMBINED_SOURCES]
        if unknown:
            raise ConfigError("benchmark.sources", f"{unknown[0]!r} is not allowed", tuple(COMBINED_SOURCES))
        if cfg.num_tasks > len(cfg.sources):
            raise ConfigError("benchmark.num_tasks", f"{cfg.num_tasks} exceeds the {len(cfg.sources)} sources "
                              "of benchmark.sources", f"1..{len(cfg.sources)}")
        if cfg.channels not in (1, 3):
            raise ConfigError("benchmark.channels", f"{cfg.channels!r} is not allowed", (1, 3))
        check_fits(cfg.augmentation, (cfg.channels, cfg.size, cfg.size))

    @property
    def data(self) -> SourceData:
        raise AttributeError("the combined benchmark has one source per task: use source_data(t)")

    def check_data(self) -> None:
        """Every task's files are there or can be downloaded, before training (each is read when its task starts)."""
        from clrepro.data.sources import check_combined

        for name in dict.fromkeys(self.cfg.sources[:self.num_tasks]):
            check_combined(name, self.cfg.root, self.cfg.download)

    def source_data(self, t: int) -> SourceData:
        """Task t's source, loaded (and cached per process) on first use."""
        if not 1 <= t <= self.num_tasks:
            raise ValueError(f"task {t} out of 1..{self.num_tasks}")
        c = self.cfg
        return load_combined(c.sources[t - 1], c.root, c.download, c.size, c.channels, c.test_fraction)

    def input_shape(self) -> tuple[int, ...]:
        return (self.cfg.channels, self.cfg.size, self.cfg.size)

    def num_classes(self, t: int) -> int:
        return self.task(t).num_classes

    def build_task(self, t: int) -> Task:
        d = self.source_data(t)

        def split(x: torch.Tensor, y: torch.Tensor) -> Split:
            return Split(normalize(x, d.mean, d.std), y)

        if d.val_x is not None:  # an official validation split (DTD, Country211)
            train, val = split(d.train_x, d.train_y), split(d.val_x, d.val_y)
        else:  # random_split(pool, [1 - p, p]) with a seed-42 generator, as the reference
            tr, va = validation_split(len(d.train_y), self.cfg.val_fraction)
            train, val = split(d.train_x[tr], d.train_y[tr]), split(d.train_x[va], d.train_y[va])
        test = split(d.test_x, d.test_y)
        return Task(t, d.num_classes, train, val, test, tuple(range(d.num_classes)), d.mean, d.std)


def build_benchmark(node: dict, source_file: str | None = None) -> Benchmark:
    """Validate the `benchmark` config node and build the registered benchmark it names."""
    from clrepro.config.hparams import build

    cls = BENCHMARKS.resolve(node, "benchmark")
    return cls(build(cls.Config, node, "benchmark"))
