"""What every peer's lockstep replay shares: the batch-order patch, the input matching, the checks and the report.

Runs inside a peer's venv (torch, numpy, scipy). A peer's `<peer>_lockstep.py` maps its modules onto the
tool-neutral names of benchmarks/parity/lockstep.py (fc.i.*, bn.i.*, emb.i, head.*) and calls these at its own
hooks: `Replay.start_task` when a task's training data is known, `Replay.load` at the task's first batch,
`Replay.epoch_end` after every epoch, then `finish` with both matrices.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


def _iter(self):  # the patched RandomSampler.__iter__: every shuffled loader of the replay is a training loader
    if not Replay.queue:
        raise RuntimeError("lockstep: the peer asked for more training epochs than clrepro recorded")
    yield from Replay.queue.pop(0)


def match_indices(x_clrepro: torch.Tensor, xs: torch.Tensor) -> tuple[torch.Tensor, float]:
    """For each of clrepro's training inputs, the index of the peer's identical one (and the largest element-wise
    difference of the matched pairs; cdist only ranks)."""
    xs = xs.reshape(len(xs), -1)
    xc = x_clrepro.reshape(len(x_clrepro), -1).to(xs.dtype)
    idx = torch.cdist(xc, xs).argmin(1)
    if len(set(idx.tolist())) != len(idx):
        raise RuntimeError("lockstep: clrepro's and the peer's training inputs do not match one to one")
    return idx, float((xc - xs[idx]).abs().max())


def init_ks(own: dict[str, torch.Tensor], clrepro: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per tensor, the two-sample Kolmogorov-Smirnov p-value of the peer's own initial draw against clrepro's: the
    replay hides how each tool initialises, so this checks that the two draw from the same distribution."""
    from scipy.stats import ks_2samp

    out = {}
    for n, v in own.items():
        a, b = v.detach().cpu().reshape(-1).double().numpy(), clrepro[n].reshape(-1).double().numpy()
        out[n] = 1.0 if (a == a[0]).all() and (b == a[0]).all() else float(ks_2samp(a, b).pvalue)  # constants: BN
    return out


class Replay:
    """One replay: clrepro's recording, the epoch orders still to be served, and the report being filled."""

    queue: list[list[int]] = []

    def __init__(self, rec: dict, peer: str):
        self.rec, self.task, self.epoch, self.loaded = rec, None, 0, False
        self.report = {"pair": rec["pair"], "seed": rec["seed"], "peer": peer,
                       "control_overrides": rec.get("control_overrides", []), "tasks": {}}
        torch.utils.data.RandomSampler.__iter__ = _iter

    def start_task(self, t: int, peer_inputs: torch.Tensor) -> None:
        """Task t's training data is known: map clrepro's epoch orders onto the peer's indices."""
        r = self.rec["tasks"][t]
        idx, dist = match_indices(r["x"], peer_inputs)
        Replay.queue = [idx[o].tolist() for o in r["orders"]]
        self.task, self.epoch, self.loaded = t, 0, False
        self.report["tasks"][t] = {"match_max_distance": dist, "epochs": []}

    def load(self, live: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> None:
        """At the task's first batch: test the peer's own draw, copy clrepro's start in place, check the batch."""
        r, rep = self.rec["tasks"][self.task], self.report["tasks"][self.task]
        names = list(r["init"]) if self.task == 1 else [n for n in r["init"] if n.startswith(("emb.", "head."))]
        rep["init_ks"] = init_ks({n: live[n] for n in names}, r["init"])
        with torch.no_grad():
            for n in names:
                live[n].copy_(r["init"][n].reshape(live[n].shape))
        first = r["orders"][0][: len(y)]
        rep["first_batch_max_diff"] = float((x.reshape(len(y), -1) - r["x"][first].reshape(len(y), -1)).abs().max())
        rep["first_batch_labels_equal"] = bool(torch.equal(y.cpu(), r["y"][first]))
        self.loaded = True

    def epoch_end(self, live: dict[str, torch.Tensor]) -> None:
        """The relative difference of every weight from clrepro's at the end of the same epoch."""
        theirs = self.rec["tasks"][self.task]["epoch_params"][self.epoch]
        diffs = {}
        for n, v in theirs.items():
            w = live[n].detach().cpu().reshape(v.shape)
            diffs[n] = float((w - v).norm() / v.norm().clamp_min(1e-12))
        self.report["tasks"][self.task]["epochs"].append(diffs)
        self.epoch += 1

    def finish(self, peer_acc: np.ndarray, out: Path) -> dict:
        """Both matrices into the report; report.json written and summarised on stdout."""
        rep, ours = self.report, self.rec["acc"].numpy()
        rep["acc_peer"], rep["acc_clrepro"] = peer_acc.tolist(), ours.tolist()
        rep["acc_max_abs_diff"] = float(np.nanmax(np.abs(peer_acc - ours)))
        rep["AA_peer"], rep["AA_clrepro"] = float(np.nanmean(peer_acc[-1])), float(np.nanmean(ours[-1]))
        (out / "report.json").write_text(json.dumps(rep, indent=1))
        if rep["control_overrides"]:
            print(f"negative control: clrepro ran with {' '.join(rep['control_overrides'])}, {rep['peer']} without")
        for t, r in rep["tasks"].items():
            worst = [max(e.values()) for e in r["epochs"]]
            ks = r.get("init_ks", {})
            ks_txt = f"; own initial draw vs clrepro's, smallest KS p {min(ks.values()):.3f} ({len(ks)} tensors)" if ks else ""
            print(f"task {t}{ks_txt}: inputs matched to {r['match_max_distance']:.2e}, first batch diff "
                  f"{r.get('first_batch_max_diff', float('nan')):.2e}; largest relative weight difference per epoch: "
                  + " ".join(f"{w:.1e}" for w in worst))
        print(f"final row {rep['peer']} " + " ".join(f"{v:.4f}" for v in peer_acc[-1]))
        print("final row clrepro " + " ".join(f"{v:.4f}" for v in ours[-1]))
        print(f"AA {rep['peer']} {rep['AA_peer']:.4f} clrepro {rep['AA_clrepro']:.4f}; "
              f"largest cell difference {rep['acc_max_abs_diff']:.4f}")
        return rep
