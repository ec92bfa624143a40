"""Benchmarks on shipped data: fixed splits, permutation parity, class splits, torchvision fallback."""

from __future__ import annotations


import pytest
import torch

from clrepro.config.hparams import build
from clrepro.data.benchmarks import Permuted, PermutedConfig, SplitClasses, SplitConfig
from clrepro.errors import ConfigError, DataUnavailableError


def test_embedded_pmnist_split_sizes_and_shared_indices():
    bench = Permuted(PermutedConfig(num_tasks=3))
    t1, t2 = bench.task(1), bench.task(2)
    assert (len(t1.train), len(t1.val), len(t1.test)) == (3600, 400, 1000)
    assert t1.train.x.shape[1:] == (1, 28, 28)
    assert torch.equal(t1.train.y, t2.train.y)  # the same split indices for every task
    assert not torch.equal(t1.train.x, t2.train.x)


def test_permutation_task1_uses_generator_default_seed():
    bench = Permuted(PermutedConfig(num_tasks=3))
    expected = torch.randperm(784, generator=torch.Generator().manual_seed(67280421310721))
    assert torch.equal(bench.permutation(1), expected)
    assert torch.equal(bench.permutation(2), torch.randperm(784, generator=torch.Generator().manual_seed(1)))
    fixed = Permuted(PermutedConfig(num_tasks=3, task1_default_seed_parity=False))
    assert torch.equal(fixed.permutation(1), torch.randperm(784, generator=torch.Generator().manual_seed(0)))


def test_numpy_permutation_seed_gives_avalanches_permutations():
    """Avalanche's PermutedMNIST(seed=0): task t is the t-th RandomState(0).permutation(784) (hand values)."""
    bench = Permuted(PermutedConfig(num_tasks=3, numpy_permutation_seed=0))
    assert bench.permutation(1)[:6].tolist() == [693, 85, 647, 392, 765, 14]
    assert bench.permutation(2)[:6].tolist() == [378, 159, 524, 744, 127, 685]
    assert bench.permutation(2).dtype == torch.int64 and sorted(bench.permutation(3).tolist()) == list(range(784))
    raw = (bench.data.test_x[:3].flatten(1)[:, bench.permutation(2)] - 0.1307) / 0.3081
    assert torch.equal(bench.task(2).test.x[:3].flatten(1), raw)
    default = Permuted(PermutedConfig(num_tasks=3))  # null: the torch permutations, unchanged
    assert torch.equal(default.permutation(2), torch.randperm(784, generator=torch.Generator().manual_seed(1)))
    with pytest.raises(ConfigError, match="numpy_permutation_seed"):
        Permuted(PermutedConfig(num_tasks=2, permutation_seeds=[3, 4], numpy_permutation_seed=0))


def test_permutation_is_applied_to_pixels():
    bench = Permuted(PermutedConfig(num_tasks=2))
    d = bench.data
    perm = bench.permutation(2)
    raw = (d.test_x[:5].flatten(1)[:, perm] - 0.1307) / 0.3081
    assert torch.allclose(bench.task(2).test.x[:5].flatten(1), raw)


def test_split_benchmark_classes_and_labels():
    bench = SplitClasses(SplitConfig(source="digits", num_tasks=5, classes_per_task=2))
    t3 = bench.task(3)
    assert t3.classes == (4, 5)
    assert set(t3.train.y.unique().tolist()) == {0, 1}
    d = bench.data
    assert len(t3.test) == int(((d.test_y == 4) | (d.test_y == 5)).sum())


def test_split_benchmark_rejects_too_many_tasks():
    with pytest.raises(ConfigError, match="exceed"):  # at validation, before any data is loaded
        SplitClasses(SplitConfig(source="digits", num_tasks=6, classes_per_task=2))


def test_torchvision_missing_gives_one_line(no_torchvision):
    from clrepro.data import sources

    sources.mnist.cache_clear()
    bench = Permuted(build(PermutedConfig, {"source": "mnist", "num_tasks": 20}, "benchmark"))
    with pytest.raises(DataUnavailableError) as e:
        bench.task(1)
    assert "pip install 'clrepro[vision]'" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("n", [4000, 1437, 11])
def test_validation_split_is_torch_random_split_with_seed_42(n):
    from torch.utils.data import random_split

    from clrepro.data.sources import validation_split

    train, val = validation_split(n, 0.1)
    ref = random_split(range(n), [0.9, 0.1], generator=torch.Generator().manual_seed(42))
    assert train.tolist() == list(ref[0].indices) and val.tolist() == list(ref[1].indices)


def test_released_tasks_give_their_memory_back_to_the_os():
    """After the last run the freed tasks' heap pages go back to the OS, so the plots reuse them instead of adding
    to training's peak (glibc only: elsewhere nothing is trimmed and the test is skipped)."""
    import ctypes.util
    import subprocess
    import sys

    if not ctypes.util.find_library("c") or sys.platform != "linux":
        pytest.skip("malloc_trim is glibc's")
    code = """
import gc, torch
from clrepro.data.benchmarks import return_freed_memory
rss = lambda: int(open('/proc/self/status').read().split('VmRSS:')[1].split()[0]) // 1024
base = rss()
parts = [torch.ones(2000) for _ in range(30000)]  # 240 MB of small blocks: glibc's heap, not mmap
grown = rss()
del parts; gc.collect()
kept = rss()
return_freed_memory()
print(base, grown, kept, rss())
"""
    base, grown, kept, trimmed = map(int, subprocess.run([sys.executable, "-c", code], capture_output=True,
                                                          text=True, check=True).stdout.split())
    assert grown - base > 150  # the blocks were resident
    assert kept - base > 100  # freeing alone keeps the pages in the process
    assert trimmed - base < (kept - base) / 4  # return_freed_memory gives them back
