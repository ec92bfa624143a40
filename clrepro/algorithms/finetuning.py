"""Finetuning: plain cross-entropy on the current task, shared backbone, a fresh optimizer per task."""

from __future__ import annotations

from clrepro.algorithms.base import CLAlgorithm
from clrepro.registry import ALGORITHMS


@ALGORITHMS.register("finetuning")
class Finetuning(CLAlgorithm):
    """The lower bound: L = CE(f_t(x), y), nothing protects old tasks."""

    summary = "plain cross-entropy on each new task (lower bound)"
    update_deletion = True  # amnesiac Finetuning (AmnesiacHAT paper baseline, docs/unlearning.md): subtract Δθ^u
