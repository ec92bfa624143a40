"""Shared fixtures: small, fast experiment configs on the embedded data."""

from __future__ import annotations

import builtins

import pytest

from clrepro.config.load import load_experiment

# 8x8 digits, 3 tasks, a small MLP: a whole run takes well under a second.
TINY = ["benchmark=pdigits", "benchmark.num_tasks=3", "backbone.hidden=[64,32]", "backbone.batch_norm=false",
        "trainer.epochs=2", "trainer.batch_size=32", "metrics=[AA,BWT]"]


@pytest.fixture
def tiny():
    """Load an experiment with the tiny overrides plus any given ones."""

    def make(experiment: str = "hat_pmnist", *overrides: str):
        return load_experiment(experiment, [*TINY, *overrides])

    return make


@pytest.fixture
def one_thread():
    """Tiny models train fastest on one torch thread, and the CI machine's 2 cores are shared."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def no_torchvision(monkeypatch):
    """Make `import torchvision` fail, as on a machine without the `vision` extra."""
    real_import = builtins.__import__

    def fake_import(name, *a, **kw):
        if name.startswith("torchvision"):
            raise ImportError("no torchvision")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", fake_import)


def pytest_collection_modifyitems(config, items):
    """Tests marked gpu skip on a machine without CUDA."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
