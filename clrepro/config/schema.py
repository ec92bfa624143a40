"""The experiment config's typed sections (trainer, optimizer, scheduler, evaluation, references)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from clrepro.backbones.heads import SCENARIOS
from clrepro.config.hparams import hp

CL_METRICS = ("AA", "BWT", "FWT", "FR")
CUL_METRICS = ("AA_remaining", "DD", "AGR")  # continual unlearning (metrics.md §1.7, §5.5)
METRICS = CL_METRICS + CUL_METRICS
LOWER_IS_BETTER = frozenset({"DD"})  # every other metric is "higher is better"
PRECISIONS = ("32-true", "64-true", "16-mixed", "bf16-mixed", "bf16-true", "16-true")


@dataclass
class TrainerConfig:
    epochs: int = hp(2, low=1, doc="epochs per task (and for the joint reference)")
    iterations: int | None = hp(None, low=1, doc="training steps per task instead of epochs (van de Ven et al.'s "
                                                 "protocols); the last epoch is cut short")
    batch_size: int = hp(128, low=1, doc="training batch size; batches by index, drop_last as the reference")
    eval_batch_size: int | None = hp(None, low=1, doc="test batch size for batch-mean accuracy (default batch_size)")
    acc_weighting: str = hp("batch_mean", choices=("batch_mean", "sample"),
                            doc="batch_mean: mean of per-batch accuracies (reference parity, metrics.md §1.1); "
                                "sample: correct / n")
    accelerator: str = hp("cpu", choices=("cpu", "cuda", "gpu", "mps", "auto"), doc="Lightning Fabric accelerator")
    devices: Any = hp(1, doc="Fabric devices (one device per run; e.g. 1 or [2])")
    precision: str = hp("32-true", choices=PRECISIONS, doc="Fabric precision")
    threads: int | None = hp(None, low=1, doc="torch intra-op threads (default: torch's choice)")
    deterministic: bool = hp(True, doc="torch.use_deterministic_algorithms (warn_only) for bit-identical reruns")


@dataclass
class OptimizerConfig:
    name: str = hp("adam", choices=("adam", "sgd"), doc="a fresh optimizer per task (algorithms.md §0)")
    lr: float = hp(1e-3, low=0.0, low_open=True, symbol="lr")
    eps: float = hp(1e-8, low=0.0, doc="Adam eps; part of AdaHAT's method (B3)")
    betas: list[float] = hp([0.9, 0.999], doc="Adam betas")
    weight_decay: float = hp(0.0, low=0.0)
    momentum: float = hp(0.0, low=0.0, high=1.0, doc="SGD momentum")


@dataclass
class SchedulerConfig:
    name: str = hp("reduce_on_plateau", choices=("reduce_on_plateau", "none"),
                   doc="ReduceLROnPlateau on the validation loss, per epoch")
    factor: float = hp(0.1, low=0.0, low_open=True, high=1.0)
    patience: int = hp(10, low=0)
    apply: str = hp("reference", choices=("reference", "all"),
                    doc="reference: only algorithms the reference steps it for (A11); all: every algorithm")


@dataclass
class ReferencesConfig:
    independent: str = hp("auto", doc="auto (run when a metric needs it), off, or a path to an acc.csv")
    joint: str = hp("auto", doc="auto, off, or a path to a joint acc.csv")
    random: str = hp("auto", doc="auto, off, or a path to an acc.csv")


@dataclass
class UnlearningConfig:
    """Continual unlearning (metrics.md §2): requests after tasks, their limits, and the CUL metrics' options."""

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
    name: str = hp("experiment", doc="experiment name (output and tracking)")
    seed: int = hp(1, low=0, doc="global seed")
    scenario: str = hp("TIL", choices=SCENARIOS, doc="TIL: head per task; CIL: heads concatenated; DIL: one head")
    metrics: list[str] = hp(list(CL_METRICS), choices=METRICS, doc="metrics to compute (decides the references run)")
    fr_variant: str = hp("joint", choices=("joint", "independent"), doc="FR against joint (default) or FR^I")
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    references: ReferencesConfig = field(default_factory=ReferencesConfig)
    unlearning: UnlearningConfig = field(default_factory=UnlearningConfig)
