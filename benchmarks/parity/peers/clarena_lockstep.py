"""Lockstep parity, CLArena's side: CLArena's own pipeline replayed from clrepro's weights and batch order.

    <clarena venv>/bin/python clarena_lockstep.py --pairs pairs/clarena.yaml --pair adahat --data <root> --dir DIR

Reads DIR/clrepro.pt (written by benchmarks/parity/lockstep.py) and runs CLArena 1.1.0's `CLMainExperiment` for the
same pair, seed and tasks, with one callback and one patch, both declared here and changing no arithmetic:
  * at the first batch of each task the callback copies clrepro's starting weights into CLArena's modules (every
    weight at task 1; the task's new head and re-drawn task embeddings later), in place, so the optimizer keeps them;
  * `torch.utils.data.RandomSampler.__iter__` yields clrepro's epoch permutations, mapped onto CLArena's sample
    indices by matching the training inputs (the nearest input; the largest element-wise difference of the matched inputs is reported). Validation and test
    loaders do not shuffle and are untouched.
At the end of every epoch the callback compares CLArena's weights with clrepro's at the same point; the report
(DIR/report.json and stdout) gives, per task and epoch, the largest relative difference per weight, then both
accuracy matrices and their difference.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

from clarena_runner import main_cfg, resolve_pair  # noqa: E402


def canonical(module, task_id: int) -> dict[str, torch.nn.Parameter | torch.Tensor]:
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


class Replay:
    """The epoch orders still to be served, in CLArena's index space (filled per task by the callback)."""

    queue: list[list[int]] = []


def _iter(self):  # the patched RandomSampler.__iter__ (train loaders only shuffle)
    if not Replay.queue:
        raise RuntimeError("lockstep: CLArena asked for more training epochs than clrepro recorded")
    yield from Replay.queue.pop(0)


def match_indices(x_clrepro: torch.Tensor, dataset) -> tuple[torch.Tensor, float]:
    """For each of clrepro's training inputs, the index of CLArena's identical one (and the largest element-wise difference)."""
    xs = torch.stack([dataset[i][0].reshape(-1) for i in range(len(dataset))])
    xc = x_clrepro.reshape(len(x_clrepro), -1).to(xs.dtype)
    idx = torch.cdist(xc, xs).argmin(1)
    if len(set(idx.tolist())) != len(idx):
        raise RuntimeError("lockstep: clrepro's and CLArena's training inputs do not match one to one")
    return idx, float((xc - xs[idx]).abs().max())  # exact, element-wise (cdist only ranks)


def make_callback(rec: dict, report: dict):
    from lightning import Callback

    class Lockstep(Callback):
        """Loads clrepro's starting weights at each task's first batch; compares weights at each epoch's end."""

        def on_train_start(self, trainer, pl_module):
            t = pl_module.task_id
            r = rec["tasks"][t]
            idx, dist = match_indices(r["x"], trainer.datamodule.dataset_train_t)
            Replay.queue = [idx[o].tolist() for o in r["orders"]]
            self.task, self.epoch, self.loaded = t, 0, False
            report["tasks"][t] = {"match_max_distance": dist, "epochs": []}

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if self.loaded:
                return
            r = rec["tasks"][self.task]
            live = canonical(pl_module, self.task)
            names = list(r["init"]) if self.task == 1 else [n for n in r["init"] if n.startswith(("emb.", "head."))]
            with torch.no_grad():
                for n in names:
                    live[n].copy_(r["init"][n].reshape(live[n].shape))
            x, y = batch
            first = r["orders"][0][: len(y)]
            report["tasks"][self.task]["first_batch_max_diff"] = float(
                (x.reshape(len(y), -1) - r["x"][first].reshape(len(y), -1)).abs().max())
            report["tasks"][self.task]["first_batch_labels_equal"] = bool(torch.equal(y.cpu(), r["y"][first]))
            self.loaded = True

        def on_train_epoch_end(self, trainer, pl_module):
            theirs = rec["tasks"][self.task]["epoch_params"][self.epoch]
            live = canonical(pl_module, self.task)
            diffs = {}
            for n, v in theirs.items():
                w = live[n].detach().cpu().reshape(v.shape)
                diffs[n] = float((w - v).norm() / v.norm().clamp_min(1e-12))
            report["tasks"][self.task]["epochs"].append(diffs)
            self.epoch += 1

    return Lockstep


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

    from clarena_metrics import quiet

    quiet()
    torch.set_num_threads(args.threads)
    rec = torch.load(args.dir / "clrepro.pt")
    pair = resolve_pair(args.pairs, args.pair)
    if rec["pair"] != pair["id"]:
        sys.exit(f"clarena_lockstep: {args.dir}/clrepro.pt holds pair '{rec['pair']}', not '{pair['id']}'")
    T = len(rec["tasks"])
    report = {"pair": pair["id"], "seed": rec["seed"], "control_overrides": rec.get("control_overrides", []),
              "tasks": {}}
    sys.modules["__main__"].Lockstep = make_callback(rec, report)
    import clarena_runner

    sys.modules["__main__"].FitTimer = clarena_runner._fit_timer_class()
    torch.utils.data.RandomSampler.__iter__ = _iter
    work = (args.dir / "clarena").resolve()
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    cfg = main_cfg(pair, rec["seed"], args.data.resolve(), work, int(rec["epochs"]))
    cfg.train_tasks, cfg.eval_after_tasks = T, T
    cfg.callbacks.append({"_target_": "__main__.Lockstep"})
    CLMainExperiment(cfg).run()
    import numpy as np
    import pandas as pd

    df = pd.read_csv(work / "results" / "acc.csv")
    theirs = np.full((T, T), np.nan)
    for _, row in df.iterrows():
        t = int(row["after_training_task"])
        for j in range(1, t + 1):
            theirs[t - 1, j - 1] = row[f"test_on_task_{j}"]
    ours = rec["acc"].numpy()
    report["acc_clarena"], report["acc_clrepro"] = theirs.tolist(), ours.tolist()
    report["acc_max_abs_diff"] = float(np.nanmax(np.abs(theirs - ours)))
    report["AA_clarena"], report["AA_clrepro"] = float(np.nanmean(theirs[-1])), float(np.nanmean(ours[-1]))
    (args.dir / "report.json").write_text(json.dumps(report, indent=1))
    if report["control_overrides"]:
        print(f"negative control: clrepro ran with {' '.join(report['control_overrides'])}, CLArena without")
    for t, r in report["tasks"].items():
        worst = [max(e.values()) for e in r["epochs"]]
        print(f"task {t}: inputs matched to {r['match_max_distance']:.2e}, first batch diff "
              f"{r.get('first_batch_max_diff', float('nan')):.2e}; largest relative weight difference per epoch: "
              + " ".join(f"{w:.1e}" for w in worst))
    print("final row clarena " + " ".join(f"{v:.4f}" for v in theirs[-1]))
    print("final row clrepro " + " ".join(f"{v:.4f}" for v in ours[-1]))
    print(f"AA clarena {report['AA_clarena']:.4f} clrepro {report['AA_clrepro']:.4f}; "
          f"largest cell difference {report['acc_max_abs_diff']:.4f}")


if __name__ == "__main__":
    main()
