"""The experiment config's typed sections (trainer, optimizer, scheduler, evaluation, references)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import re

from clrepro.backbones.heads import SCENARIOS
from clrepro.config.hparams import hp
from clrepro.limits import SEED_MAX

_NAME_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+=@-]*( [A-Za-z0-9_.+=@-]+)*")
NAME_CHARS = "letters, digits, _ . + = @ - and single spaces; '/' between parts; no '..'"


def name_problem(name: str) -> str | None:
    """Why `name` cannot name an experiment (its output folder outputs/<name>/ and its MLflow tags), or None."""
    if not name or len(name) > 200:
        return "must be 1 to 200 characters long"
    parts = name.split("/")
    for part in parts:
        if part in ("", ".", "..") or not _NAME_PART.fullmatch(part) or len(part) > 100:
            return f"{name[:80]!r} is not a safe folder name (outputs/<name>/)", NAME_CHARS
    return None


def devices_problem(devices) -> str | None:
    """Lightning Fabric's `devices` for one device: 1, or a one-element list with a device index."""
    if devices == 1 and not isinstance(devices, bool):
        return None
    if (isinstance(devices, list) and len(devices) == 1 and isinstance(devices[0], int)
            and not isinstance(devices[0], bool) and 0 <= devices[0] < 1024):
        return None
    return f"{devices!r} is not one device", "1, or [i] for device index i (a run uses one device)"


CL_METRICS = ("AA", "BWT", "FWT", "FR")
CUL_METRICS = ("AA_remaining", "DD", "AGR")  # continual unlearning (docs/unlearning.md)
METRICS = CL_METRICS + CUL_METRICS
LOWER_IS_BETTER = frozenset({"DD"})  # every other metric is "higher is better"
PRECISIONS = ("32-true", "64-true", "16-mixed", "bf16-mixed", "bf16-true", "16-true")


@dataclass
class TrainerConfig:
    epochs: int = hp(2, low=1, high=100_000, doc="epochs per task (and for the joint reference)")
    iterations: int | None = hp(None, low=1, high=10**9, doc="training steps per task instead of epochs (van de Ven et al.'s "
                                                 "protocols); the last epoch is cut short")
    batch_size: int = hp(128, low=1, high=2**31 - 1, doc="training batch size; batches by index, drop_last as the reference")
    eval_batch_size: int | None = hp(None, low=1, high=2**31 - 1, doc="test batch size for batch-mean accuracy (default batch_size)")
    acc_weighting: str = hp("batch_mean", choices=("batch_mean", "sample"),
                            doc="batch_mean: mean of per-batch accuracies (reference parity, docs/metrics/index.md); "
                                "sample: correct / n")
    accelerator: str = hp("cpu", choices=("cpu", "cuda", "gpu", "mps", "auto"), doc="Lightning Fabric accelerator")
    devices: Any = hp(1, check=devices_problem, doc="Fabric devices (one device per run; e.g. 1 or [2])")
    precision: str = hp("32-true", choices=PRECISIONS, doc="Fabric precision")
    threads: int | None = hp(None, low=1, high=1024, doc="torch intra-op threads (default: torch's choice)")
    deterministic: bool = hp(True, doc="torch.use_deterministic_algorithms (warn_only) for bit-identical reruns")


@dataclass
class OptimizerConfig:
    name: str = hp("adam", choices=("adam", "sgd"), doc="a fresh optimizer per task (docs/algorithms/index.md)")
    lr: float = hp(1e-3, low=0.0, low_open=True, symbol="lr")
    eps: float = hp(1e-8, low=0.0, low_open=True, doc="Adam eps; part of AdaHAT's method (B3)")
    betas: list[float] = hp([0.9, 0.999], low=0.0, high=1.0, high_open=True, length=2,
                            doc="Adam betas (beta1, beta2), each in [0, 1)")
    weight_decay: float = hp(0.0, low=0.0)
    momentum: float = hp(0.0, low=0.0, high=1.0, doc="SGD momentum")


@dataclass
class SchedulerConfig:
    name: str = hp("reduce_on_plateau", choices=("reduce_on_plateau", "none"),
                   doc="ReduceLROnPlateau on the validation loss, per epoch")
    factor: float = hp(0.1, low=0.0, low_open=True, high=1.0, high_open=True,
                       doc="new lr = factor x lr (ReduceLROnPlateau needs factor < 1)")
    patience: int = hp(10, low=0, high=10**6)
    apply: str = hp("reference", choices=("reference", "all"),
                    doc="reference: only algorithms the reference steps it for (A11); all: every algorithm")


@dataclass
class ReferencesConfig:
    independent: str = hp("auto", doc="auto (run when a metric needs it), off, or a path to an acc.csv")
    joint: str = hp("auto", doc="auto, off, or a path to a joint acc.csv")
    random: str = hp("auto", doc="auto, off, or a path to an acc.csv")


@dataclass
class UnlearningConfig:
    """Continual unlearning (docs/unlearning.md): requests after tasks, their limits, and the CUL metrics' options."""

    requests: dict | None = hp(None, doc="{N: [task ids]}: after training task N, unlearn these tasks (empty: a CL run)")
    unlearnable_age: Any = hp(4, doc="a task τ can be unlearned after task N iff N − τ < age; an int or {task: age}")
    dd_distance: str = hp("linear_cka", choices=("linear_cka", "euclidean", "manhattan", "cosine"),
                          doc="distance between the main and the retrain model's features (DD)")
    dd_scope: str = hp("unlearned", choices=("unlearned", "remaining", "all"), doc="tasks DD averages over")
    ag_scope: str = hp("remaining", choices=("remaining", "unlearned", "all"), doc="tasks AGR averages over")
    retrain: str = hp("auto", choices=("auto", "off"), doc="the retrain reference (never saw the unlearned tasks)")
    original: str = hp("auto", choices=("auto", "off"), doc="the original reference (never asked to unlearn)")


@dataclass
class ExperimentConfig:
    """A whole experiment; `benchmark`, `backbone` and `algorithm` are validated by their registered classes."""

    benchmark: dict
    backbone: dict
    algorithm: dict
    name: str = hp("experiment", check=name_problem, doc="experiment name (output folder and tracking)")
    seed: int = hp(1, low=0, high=SEED_MAX, doc="global seed (numpy accepts 0..2**32-1)")
    scenario: str = hp("TIL", choices=SCENARIOS, doc="TIL: head per task; CIL: heads concatenated; DIL: one head")
    metrics: list[str] = hp(list(CL_METRICS), choices=METRICS, min_len=1, unique=True, doc="metrics to compute (decides the references run)")
    fr_variant: str = hp("joint", choices=("joint", "independent"), doc="FR against joint (default) or FR^I")
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    references: ReferencesConfig = field(default_factory=ReferencesConfig)
    unlearning: UnlearningConfig = field(default_factory=UnlearningConfig)
