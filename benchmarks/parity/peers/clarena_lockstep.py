"""Lockstep parity, CLArena's side: CLArena's own pipeline replayed from clrepro's weights and batch order.

    <clarena venv>/bin/python clarena_lockstep.py --pairs pairs/clarena.yaml --pair adahat --data <root> --dir DIR

Reads DIR/clrepro.pt (written by benchmarks/parity/lockstep.py) and runs CLArena 1.1.0's `CLMainExperiment` for the
same pair, seed and tasks, with one callback and the sampler patch of lockstep_replay.py, neither changing any
arithmetic:
  * at the first batch of each task the callback copies clrepro's starting weights into CLArena's modules (every
    weight at task 1; the task's new head and re-drawn task embeddings later), in place, so the optimizer keeps them,
    after testing CLArena's own draw against clrepro's (two-sample KS per tensor: the replay hides how each tool
    initialises);
  * `torch.utils.data.RandomSampler.__iter__` yields clrepro's epoch permutations, mapped onto CLArena's sample
    indices by matching the training inputs. Validation and test loaders do not shuffle and are untouched.
At the end of every epoch the callback compares CLArena's weights with clrepro's at the same point; the report
(DIR/report.json and stdout) gives, per task and epoch, the largest relative difference per weight, then both
accuracy matrices and their difference.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from clarena_runner import main_cfg, resolve_pair  # noqa: E402
from lockstep_replay import Replay  # noqa: E402


def canonical(module, task_id: int) -> dict[str, torch.Tensor]:
    """CLArena's tensors under the tool-neutral names of lockstep.py: fc.i.*, bn.i.*, emb.i, head.* (live tensors)."""
    b, out = module.backbone, {}
    for i, fc in enumerate(b.fc):
        out[f"fc.{i}.weight"], out[f"fc.{i}.bias"] = fc.weight, fc.bias
    if getattr(b, "batch_normalization", None) and hasattr(b, "fc_bn"):
        for i, bn in enumerate(b.fc_bn):
            for k in ("weight", "bias", "running_mean", "running_var"):
                out[f"bn.{i}.{k}"] = getattr(bn, k)
    if hasattr(b, "task_embedding_t"):
        for i, te in enumerate(b.task_embedding_t.values()):
            out[f"emb.{i}"] = te.weight
    head = module.heads.get_head(task_id)
    out["head.weight"], out["head.bias"] = head.weight, head.bias
    return out


def make_callback(replay: Replay):
    from lightning import Callback

    class Lockstep(Callback):
        """Serves clrepro's batch order and start; compares the weights at each epoch's end."""

        def on_train_start(self, trainer, pl_module):
            ds = trainer.datamodule.dataset_train_t
            replay.start_task(pl_module.task_id, torch.stack([ds[i][0].reshape(-1) for i in range(len(ds))]))

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if not replay.loaded:
                replay.load(canonical(pl_module, replay.task), *batch)

        def on_train_epoch_end(self, trainer, pl_module):
            replay.epoch_end(canonical(pl_module, replay.task))

    return Lockstep


def read_acc(path: Path, T: int) -> np.ndarray:
    """CLArena's acc.csv (after_training_task, average_accuracy, test_on_task_j) as a T×T matrix."""
    import pandas as pd

    acc = np.full((T, T), np.nan)
    for _, row in pd.read_csv(path).iterrows():
        t = int(row["after_training_task"])
        for j in range(1, t + 1):
            acc[t - 1, j - 1] = row[f"test_on_task_{j}"]
    return acc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", required=True)
    ap.add_argument("--pair", required=True)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--dir", required=True, type=Path, help="holds clrepro.pt; report.json goes here")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    os.environ.setdefault("WANDB_MODE", "disabled")
    from clarena.pipelines import CLMainExperiment

    import clarena_runner
    from clarena_metrics import quiet

    quiet()
    torch.set_num_threads(args.threads)
    rec = torch.load(args.dir / "clrepro.pt")
    pair = resolve_pair(args.pairs, args.pair)
    if rec["pair"] != pair["id"]:
        sys.exit(f"clarena_lockstep: {args.dir}/clrepro.pt holds pair '{rec['pair']}', not '{pair['id']}'")
    T = len(rec["tasks"])
    replay = Replay(rec, "clarena")
    sys.modules["__main__"].Lockstep = make_callback(replay)
    sys.modules["__main__"].FitTimer = clarena_runner._fit_timer_class()
    work = (args.dir / "clarena").resolve()
    shutil.rmtree(work, ignore_errors=True)
    cfg = main_cfg(pair, rec["seed"], args.data.resolve(), work, int(rec["epochs"]))
    cfg.train_tasks, cfg.eval_after_tasks = T, T
    cfg.callbacks.append({"_target_": "__main__.Lockstep"})
    CLMainExperiment(cfg).run()
    replay.finish(read_acc(work / "results" / "acc.csv", T), args.dir)


if __name__ == "__main__":
    main()
