"""Lockstep parity, Avalanche's side: the pair's Avalanche strategy replayed from clrepro's weights and batch order.

    <avalanche venv>/bin/python avalanche_lockstep.py --pairs pairs/avalanche.yaml --pair si --data <root> --dir DIR

Reads DIR/clrepro.pt (benchmarks/parity/lockstep.py) and runs avalanche_runner.run_seed for the same pair and seed
with one extra plugin and the sampler patch of lockstep_replay.py (neither changes any arithmetic):
  * before each experience the plugin maps clrepro's epoch orders onto the experience's sample indices by
    matching the inputs, and `RandomSampler.__iter__` serves them (the only shuffled loader is the training one:
    EWC's Fisher pass does not shuffle);
  * at the experience's first iteration it copies clrepro's starting weights in place (every weight at task 1;
    the task's new head later), after testing Avalanche's own draw against clrepro's (KS per tensor);
  * after every epoch it compares every weight with clrepro's.
Avalanche's task labels count from 0, clrepro's task ids from 1. TIL pairs only (one head per task).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lockstep_replay import Replay  # noqa: E402


def canonical(model, task_id: int) -> dict[str, torch.Tensor]:
    """Avalanche's tensors under lockstep.py's names: the feature Linears as fc.i.*, task task_id's head as head.*."""
    out = {}
    linears = [m for m in model.features if isinstance(m, torch.nn.Linear)]
    for i, fc in enumerate(linears):
        out[f"fc.{i}.weight"], out[f"fc.{i}.bias"] = fc.weight, fc.bias
    head = model.classifier.classifiers[str(task_id - 1)].classifier
    out["head.weight"], out["head.bias"] = head.weight, head.bias
    return out


def make_plugin(replay: Replay):
    from avalanche.core import SupervisedPlugin

    class Lockstep(SupervisedPlugin):
        """Serves clrepro's batch order and start; compares the weights after every epoch."""

        def before_training_exp(self, strategy, **kw):
            ds = strategy.adapted_dataset
            xs = torch.stack([ds[i][0].reshape(-1) for i in range(len(ds))])
            replay.start_task(strategy.experience.current_experience + 1, xs)

        def before_training_iteration(self, strategy, **kw):
            if not replay.loaded:
                replay.load(canonical(strategy.model, replay.task), strategy.mb_x, strategy.mb_y)

        def after_training_epoch(self, strategy, **kw):
            replay.epoch_end(canonical(strategy.model, replay.task))

    return Lockstep()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", required=True)
    ap.add_argument("--pair", required=True)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--dir", required=True, type=Path, help="holds clrepro.pt; report.json goes here")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    os.environ.setdefault("WANDB_MODE", "disabled")
    warnings.filterwarnings("ignore", module=r"avalanche(\.|$)")
    import avalanche_runner as R

    torch.set_num_threads(args.threads)
    rec = torch.load(args.dir / "clrepro.pt")
    pair = R.resolve_pair(args.pairs, args.pair)
    if rec["pair"] != pair["id"]:
        sys.exit(f"avalanche_lockstep: {args.dir}/clrepro.pt holds pair '{rec['pair']}', not '{pair['id']}'")
    if pair["peer"]["model"]["head"] != "multi_head":
        sys.exit(f"avalanche_lockstep: pair '{pair['id']}' is not TIL (one head per task); not replayed")
    pair["peer"]["benchmark"]["num_tasks"] = len(rec["tasks"])
    replay = Replay(rec, "avalanche")
    work = (args.dir / "avalanche").resolve()
    R.run_seed(copy.deepcopy(pair), int(rec["seed"]), args.data.resolve(), work, int(rec["epochs"]),
               plugins=[make_plugin(replay)])
    acc = np.asarray([[float(v) if v not in ("", None) else np.nan for v in row[2:]]
                      for row in _csv_rows(work / "acc.csv")])
    replay.finish(acc, args.dir)


def _csv_rows(path: Path) -> list[list[str]]:
    import csv

    with open(path) as f:
        rows = list(csv.reader(f))
    return rows[1:]


if __name__ == "__main__":
    main()
