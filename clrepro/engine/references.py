"""Reference experiments (independent, joint, random) derived from a main config (docs/metrics/index.md#reference-runs)."""

from __future__ import annotations

import copy

from clrepro.config.load import components
from clrepro.config.schema import ExperimentConfig
from clrepro.registry import BACKBONES

REFERENCE_ALGORITHMS = {"independent": "independent", "joint": "joint", "random": "random"}
# Which references each metric needs (FR^I needs the independent one instead of the joint one).
NEEDS = {"AA": (), "BWT": (), "FWT": ("independent",), "FR": ("joint", "random"), "AA_remaining": (),
         "DD": (), "AGR": ()}
# The continual-unlearning references (docs/unlearning.md): retrain never saw the unlearned tasks, original never unlearned.
CUL_NEEDS = {"DD": "retrain", "AGR": "original"}


def needed_references(cfg: ExperimentConfig) -> list[str]:
    """The reference runs the requested metrics need, in a fixed order."""
    needs = set()
    for m in cfg.metrics:
        needs.update(NEEDS[m])
    if "FR" in cfg.metrics and cfg.fr_variant == "independent":
        needs.discard("joint")
        needs.add("independent")
    return [r for r in REFERENCE_ALGORITHMS if r in needs]


def reference_config(cfg: ExperimentConfig, kind: str) -> ExperimentConfig:
    """The main config with the algorithm replaced by the reference and a masked backbone by its plain twin.

    HAT-family backbones cannot run the references as the reference implementation derives them, so they
    are built from the plain twin (docs/metrics/index.md#reference-runs). The joint reference is always task-incremental.
    """
    ref = copy.deepcopy(cfg)
    ref.name = f"{cfg.name}/ref{kind}"
    ref.algorithm = {"name": REFERENCE_ALGORITHMS[kind]}
    backbone_cls = components(cfg).backbone_cls
    if backbone_cls.masked and backbone_cls.plain_twin:
        twin = BACKBONES.get(backbone_cls.plain_twin)
        keep = {k: v for k, v in cfg.backbone.items() if k in twin.Config.__dataclass_fields__}
        ref.backbone = {**keep, "name": backbone_cls.plain_twin}
    if kind == "joint":
        ref.scenario = "TIL"
    ref.metrics = ["AA"]
    return ref


def needed_cul_references(cfg: ExperimentConfig) -> list[str]:
    """retrain (for DD) and original (for AGR), as the metrics ask and `unlearning.<kind>` allows."""
    return [CUL_NEEDS[m] for m in ("DD", "AGR") if m in cfg.metrics and getattr(cfg.unlearning, CUL_NEEDS[m]) == "auto"]


def cul_reference_config(cfg: ExperimentConfig, kind: str) -> ExperimentConfig:
    """The same algorithm, hyperparameters and seed with unlearning switched off; the retrain run's task
    subset is passed to the engine separately (the remaining tasks keep their ids and order)."""
    ref = copy.deepcopy(cfg)
    ref.name = f"{cfg.name}/ref{kind}"
    ref.unlearning.requests = None
    ref.metrics = ["AA"]
    return ref
