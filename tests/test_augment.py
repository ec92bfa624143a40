"""Train-time augmentation: crops and flips exactly as specified (against a numpy reference and by hand), seeded,
off by default with the data path bit-identical, replay buffers storing unaugmented inputs, the shipped configs."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from clrepro.config.load import load_experiment, resolved_dict
from clrepro.data.augment import Augmentation, AugmentationConfig, augmentation_seed, crop_flip
from clrepro.data.sources import normalize
from clrepro.data.task import Split, Task
from clrepro.errors import ConfigError

ONE_THREAD = "trainer.threads=1"
# Split digits (8 x 8 images, 2 classes per task) with DER++: augmentation reaches both the batch and the buffer.
SMALL = ["benchmark=split_digits", "benchmark.num_tasks=3", "backbone.hidden=[32]", "backbone.batch_norm=false",
         "trainer.epochs=1", "trainer.batch_size=32", "metrics=[AA]", ONE_THREAD]


def numpy_reference(x: np.ndarray, top, left, flip, crop: int, padding: int, fill: np.ndarray) -> np.ndarray:
    """torchvision's RandomCrop(crop, padding) → RandomHorizontalFlip on one image at a time, in numpy."""
    out = []
    for i, img in enumerate(x):
        padded = np.stack([np.pad(ch, padding, mode="constant", constant_values=fill[c]) for c, ch in enumerate(img)])
        window = padded[:, top[i]:top[i] + crop, left[i]:left[i] + crop]
        out.append(window[:, :, ::-1] if flip[i] else window)
    return np.stack(out)


def _task(t: int, mean: tuple, std: tuple, c: int = 2) -> Task:
    x = torch.zeros(4, c, 5, 5)
    split = Split(x, torch.zeros(4, dtype=torch.long))
    return Task(t, 2, split, split, split, (0, 1), mean, std)


def test_batch_is_cropped_and_flipped_as_the_numpy_reference():
    cfg = AugmentationConfig(crop=5, padding=2, hflip=True)
    aug = Augmentation(cfg, seed=7, channels=2)
    aug.add_task(_task(1, (0.5, 0.25), (0.5, 0.125)))
    x = torch.randn(64, 2, 5, 5)
    out = aug(x, 1)
    # the documented draws: n top offsets, n left offsets (0..H + 2p - crop), n flips (U(0, 1) < 0.5)
    g = torch.Generator().manual_seed(augmentation_seed(7))
    top, left = torch.randint(0, 5, (64,), generator=g), torch.randint(0, 5, (64,), generator=g)
    flip = torch.rand(64, generator=g) < 0.5
    fill = np.array([(0 - 0.5) / 0.5, (0 - 0.25) / 0.125], dtype=np.float32)  # Normalize of a zero pixel
    ref = numpy_reference(x.numpy(), top.numpy(), left.numpy(), flip.numpy(), 5, 2, fill)
    assert out.shape == x.shape and np.array_equal(out.numpy(), ref)
    assert set(top.tolist()) == set(range(5)) and 0 < int(flip.sum()) < 64  # every offset 0..2p occurs, some flips
    assert torch.equal(aug.fill(1, torch.device("cpu")), normalize(torch.zeros(1, 2, 1, 1), (0.5, 0.25),
                                                                   (0.5, 0.125)).view(2))


def test_crop_offsets_and_flip_by_hand():
    x = torch.arange(1.0, 10.0).view(1, 1, 3, 3)  # [[1 2 3] [4 5 6] [7 8 9]], padding 1, fill -1
    f = torch.tensor([-1.0])
    top_left = crop_flip(x, torch.tensor([0]), torch.tensor([0]), torch.tensor([False]), 3, 1, f)
    assert top_left[0, 0].tolist() == [[-1, -1, -1], [-1, 1, 2], [-1, 4, 5]]
    bottom_flipped = crop_flip(x, torch.tensor([2]), torch.tensor([1]), torch.tensor([True]), 3, 1, f)
    assert bottom_flipped[0, 0].tolist() == [[6, 5, 4], [9, 8, 7], [-1, -1, -1]]
    centre = crop_flip(x, torch.tensor([1]), torch.tensor([1]), torch.tensor([False]), 3, 1, f)
    assert torch.equal(centre, x)  # the centre window of the padded image is the image
    only_flip = crop_flip(x, None, None, torch.tensor([True]), None, 0, f)
    assert only_flip[0, 0].tolist() == [[3, 2, 1], [6, 5, 4], [9, 8, 7]]


def test_offsets_are_uniform_over_the_padded_range_and_flips_half():
    aug = Augmentation(AugmentationConfig(crop=32, padding=4, hflip=True), seed=1, channels=3)
    top, left, flip = aug.draw(20_000, 32, 32)
    counts = np.bincount(torch.cat([top, left]).numpy(), minlength=9)
    assert len(counts) == 9 and counts.min() > 0.9 * 40_000 / 9  # 0..8: RandomCrop(32, padding=4) on 32 x 32
    assert abs(float(flip.float().mean()) - 0.5) < 0.02


def test_seeded_per_run_and_padded_per_sample_task():
    cfg = AugmentationConfig(crop=5, padding=2, hflip=True)
    x = torch.randn(16, 2, 5, 5)
    runs = []
    for seed in (3, 3, 4):
        aug = Augmentation(cfg, seed, 2)
        aug.add_task(_task(1, (0.1, 0.2), (0.3, 0.4)))
        aug.add_task(_task(2, (0.9, 0.8), (0.7, 0.6)))
        runs.append([aug(x, 1), aug(x, 2)])
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))  # same seed, same augmented batches
    assert not torch.equal(runs[0][0], runs[2][0])
    # a replay batch mixes tasks: each sample is padded with its own task's normalised zero
    aug = Augmentation(AugmentationConfig(crop=5, padding=2), 0, 2)
    aug.add_task(_task(1, (0.1, 0.2), (0.3, 0.4)))
    aug.add_task(_task(2, (0.9, 0.8), (0.7, 0.6)))
    state = aug.generator.get_state()
    mixed = aug(torch.zeros(2, 2, 5, 5), torch.tensor([1, 2]))
    aug.generator.set_state(state)
    top, left, _ = aug.draw(2, 5, 5)
    for i, t in enumerate((1, 2)):
        fill = aug.fill(t, torch.device("cpu")).numpy()
        ref = numpy_reference(np.zeros((1, 2, 5, 5), np.float32), top[i:i + 1].numpy(), left[i:i + 1].numpy(), [False],
                              5, 2, fill)
        assert np.array_equal(mixed[i:i + 1].numpy(), ref)
    assert copy.deepcopy(aug) is aug  # a model copy (Flashback's old model) shares the run's augmentation


def _run(*overrides: str, experiment: str = "derpp_pmnist"):
    from clrepro.engine.loop import Engine

    engine = Engine(load_experiment(experiment, [*SMALL, *overrides]))
    return engine, engine.run()


def test_off_is_bit_identical_to_the_unaugmented_path():
    """Default (no augmentation), explicitly off, and an identity augmentation (crop = the image, no padding, no flip:
    every batch through the gather and the buffer's transform) give the same accuracy matrix bit for bit, for DER++
    (reservoir and task-end buffers) and Finetuning; an active augmentation changes it."""
    for experiment, extra in (("derpp_pmnist", []), ("derpp_pmnist", ["algorithm.buffer_policy=class_balanced_task_end"]),
                              ("finetuning_pmnist", [])):
        _, default = _run(*extra, experiment=experiment)
        _, off = _run(*extra, "+benchmark.augmentation={crop: null, padding: 0, hflip: false}", experiment=experiment)
        engine, identity = _run(*extra, "+benchmark.augmentation={crop: 8}", experiment=experiment)
        assert engine.augment is not None
        assert np.array_equal(default.acc, off.acc, equal_nan=True)
        assert np.array_equal(default.acc, identity.acc, equal_nan=True), experiment
    _, on = _run("+benchmark.augmentation={crop: 8, padding: 2, hflip: true}")
    assert not np.array_equal(default.acc, on.acc, equal_nan=True)


@pytest.mark.parametrize("experiment, extra", [
    ("derpp_pmnist", []),
    ("unlearning/amnesiac_hat_smnist5", ["~unlearning.requests"]),
    ("flashback/pmnist_embedded", ["algorithm.host={name: derpp}", "trainer.epochs=2"]),  # the host's buffer, copied
])
def test_buffer_stores_unaugmented_inputs_and_replays_them_augmented(experiment, extra):
    engine, _ = _run("+benchmark.augmentation={crop: 8, padding: 2, hflip: true}", *extra, experiment=experiment)
    algo = engine.algorithm
    buffer = (algo.host if hasattr(algo, "host") else algo).buffer
    assert buffer.transform is engine.augment and algo.augmentation is engine.augment
    stored = buffer.x[:len(buffer)].flatten(1)
    pool = torch.cat([engine.benchmark.task(t).train.x for t in (1, 2, 3)]).flatten(1)

    def in_pool(rows: torch.Tensor) -> torch.Tensor:
        return (rows[:, None, :] == pool[None]).all(-1).any(1)

    assert len(buffer) > 0 and bool(in_pool(stored).all())  # stored inputs are training images, never augmented
    replay = buffer.sample(64)
    assert not torch.equal(replay.x, buffer.x[replay.index])  # augmented at replay time
    assert not bool(in_pool(replay.x.flatten(1)).all())


def test_config_validation_and_the_shipped_configs():
    with pytest.raises(ConfigError, match=r"benchmark\.augmentation\.padding: 4 needs a crop"):
        load_experiment("derpp_pmnist", [*SMALL, "+benchmark.augmentation={padding: 4}"])
    with pytest.raises(ConfigError) as e:
        load_experiment("derpp_pmnist", [*SMALL, "+benchmark.augmentation={crop: 32, padding: 4}"])
    assert str(e.value) == ("configs/experiment/derpp_pmnist.yaml: benchmark.augmentation.crop: 32 does not match the "
                            "8 x 8 inputs (the crop gives the model its input) (allowed: 8)")
    with pytest.raises(ConfigError, match=r"benchmark\.augmentation\.hflip: expected true or false"):
        load_experiment("derpp_pmnist", [*SMALL, "+benchmark.augmentation={hflip: yes please}"])
    mammoth = {"crop": 32, "padding": 4, "hflip": True}
    for name in ("der_scifar10", "derpp_scifar10", "flashback/split_cifar100"):
        assert resolved_dict(load_experiment(name))["benchmark"]["augmentation"] == mammoth, name
    off = {"crop": None, "padding": 0, "hflip": False}
    for name in ("hat_pmnist", "hat_pmnist20", "regularization/split_cifar100", "der_pmnist20"):
        assert resolved_dict(load_experiment(name))["benchmark"]["augmentation"] == off, name
    assert Path(__file__).parents[1].joinpath("configs/benchmark/split_cifar10.yaml").is_file()
