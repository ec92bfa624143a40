"""The four diagonal Fisher estimators (empirical, exact, sampled, batch), vectorised with torch.func."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import grad, vmap

# logits_fn(params, x) -> logits of the batch x, with `params` (name → tensor) substituted into the model.
LogitsFn = Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor]
Fisher = dict[str, torch.Tensor]
Estimator = Callable[[LogitsFn, Fisher, torch.Tensor, torch.Tensor, int], Fisher]

PER_SAMPLE_BUDGET = 2 ** 26  # per-sample gradient elements held at once (chunk × #params); 256 MiB in fp32


def _chunk(params: Fisher, batch_size: int) -> int:
    """Samples per vmap chunk: the batch size, capped so chunk × #params fits PER_SAMPLE_BUDGET."""
    numel = sum(p.numel() for p in params.values())
    return max(1, min(batch_size, PER_SAMPLE_BUDGET // max(numel, 1)))


def _zeros(params: Fisher) -> Fisher:
    return {n: torch.zeros_like(p) for n, p in params.items()}


@torch.no_grad()
def probabilities(logits_fn: LogitsFn, params: Fisher, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The model's predictive distribution p(c | x) for every sample, shape [N, C]."""
    return torch.cat([F.softmax(logits_fn(params, x[i:i + batch_size]).float(), dim=-1)
                      for i in range(0, len(x), batch_size)])


@torch.no_grad()  # torch.func.grad still differentiates; nothing joins the outer graph
def weighted_squared_grads(logits_fn: LogitsFn, params: Fisher, x: torch.Tensor, labels: torch.Tensor,
                           weights: torch.Tensor | None, batch_size: int) -> Fisher:
    """Σ_n w_n (∇_θ log p(labels_n | x_n))², the per-sample gradients taken with vmap(grad) in chunks."""

    def log_likelihood(ps, xi, ci):
        logp = F.log_softmax(logits_fn(ps, xi.unsqueeze(0)).float(), dim=-1).squeeze(0)
        return logp.gather(0, ci.unsqueeze(0)).squeeze(0)

    per_sample = vmap(grad(log_likelihood), in_dims=(None, 0, 0))
    total, chunk = _zeros(params), _chunk(params, batch_size)
    for i in range(0, len(x), chunk):
        g = per_sample(params, x[i:i + chunk], labels[i:i + chunk])
        w = None if weights is None else weights[i:i + chunk]
        for n, gn in g.items():
            sq = gn.pow(2)
            total[n] += (sq.sum(0) if w is None else torch.tensordot(w.to(sq.dtype), sq, dims=1))
    return total


def empirical(logits_fn: LogitsFn, params: Fisher, x: torch.Tensor, y: torch.Tensor, batch_size: int,
              squared_grads=None) -> Fisher:
    """Empirical Fisher: (1/N) Σ_n (∇ log p(y_n | x_n))², the true label's per-sample squared gradient."""
    total = (squared_grads or weighted_squared_grads)(logits_fn, params, x, y, None, batch_size)
    return {n: t / len(x) for n, t in total.items()}


def exact(logits_fn: LogitsFn, params: Fisher, x: torch.Tensor, y: torch.Tensor, batch_size: int,
          squared_grads=None) -> Fisher:
    """Fisher under the model's own predictive distribution: (1/N) Σ_n Σ_c p_c(x_n) (∇ log p(c | x_n))².

    van de Ven's `fisher_labels='all'`; one vectorised pass per class c (classes, never samples, are looped).
    """
    p = probabilities(logits_fn, params, x, batch_size)
    total = _zeros(params)
    for c in range(p.shape[1]):
        labels = torch.full((len(x),), c, dtype=torch.long, device=x.device)
        part = (squared_grads or weighted_squared_grads)(logits_fn, params, x, labels, p[:, c], batch_size)
        for n in total:
            total[n] += part[n]
    return {n: t / len(x) for n, t in total.items()}


def sampled(logits_fn: LogitsFn, params: Fisher, x: torch.Tensor, y: torch.Tensor, batch_size: int,
            squared_grads=None) -> Fisher:
    """Sampled Fisher: one label ĉ_n ~ p(· | x_n) per sample (torch's global RNG), then (1/N) Σ_n (∇ log p(ĉ_n | x_n))²."""
    drawn = torch.multinomial(probabilities(logits_fn, params, x, batch_size), 1).squeeze(1)
    return empirical(logits_fn, params, x, drawn, batch_size, squared_grads)


@torch.no_grad()  # torch.func.grad still differentiates; nothing joins the outer graph
def batch(logits_fn: LogitsFn, params: Fisher, x: torch.Tensor, y: torch.Tensor, batch_size: int,
          squared_grads=None) -> Fisher:
    """The reference's estimator (A7): Σ_B |B| · (∇ CE_mean(B))² / N over consecutive batches of `batch_size`.

    The squared gradient of the batch-mean loss, not a per-sample Fisher; the last batch may be smaller
    (pass a multiple of `batch_size` to drop it, as a drop_last loader does).
    """
    batch_grad = grad(lambda ps, xb, yb: F.cross_entropy(logits_fn(ps, xb).float(), yb))
    total = _zeros(params)
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        for n, g in batch_grad(params, xb, yb).items():
            total[n] += len(yb) * g.pow(2)
    return {n: t / len(x) for n, t in total.items()}


def linear_squared_grads(model: nn.Module, names: list[str]):
    """A fast `weighted_squared_grads` for parameters that are all nn.Linear weights and biases, or None.

    For y = W a + b the per-sample gradient of W is δ_n a_nᵀ (δ_n = ∂ log p / ∂ y_n), so
    Σ_n w_n (∇_W)² = (w ⊙ δ²)ᵀ (a²) and Σ_n w_n (∇_b)² = Σ_n w_n δ_n²: one ordinary backward of Σ_n log p(c_n | x_n)
    gives every δ_n (samples do not interact in eval mode), with no per-sample gradient tensors held.
    Equal to the vmap estimator (tested); used when every regularized parameter sits on a Linear layer called once.
    """
    modules = dict(model.named_modules())
    layers: dict[str, nn.Linear] = {}
    for n in names:
        mod, _, attr = n.rpartition(".")
        m = modules.get(mod)
        if not isinstance(m, nn.Linear) or attr not in ("weight", "bias"):
            return None
        layers[mod] = m

    def squared_grads(logits_fn, params, x, labels, weights, batch_size):
        seen: dict[str, list] = {k: [] for k in layers}

        def hook(name):
            def f(mod, inp, out):
                seen[name].append((inp[0].detach(), out))
            return f

        handles = [m.register_forward_hook(hook(k)) for k, m in layers.items()]
        total = _zeros(params)
        grad_params = {n: t.detach().requires_grad_(True) for n, t in params.items()}  # layer outputs need a graph
        chunk = max(batch_size, 2048)  # no per-sample tensors: large chunks are cheap
        try:
            for i in range(0, len(x), chunk):
                for v in seen.values():
                    v.clear()
                with torch.enable_grad():
                    logp = F.log_softmax(logits_fn(grad_params, x[i:i + chunk]).float(), dim=-1)
                    picked = logp.gather(1, labels[i:i + chunk, None]).sum()
                    if any(len(v) != 1 or v[0][0].dim() != 2 for v in seen.values()):
                        raise _NotLinear
                    outs = [seen[k][0][1] for k in layers]
                    deltas = torch.autograd.grad(picked, outs, allow_unused=True)
                w = None if weights is None else weights[i:i + chunk].to(torch.float32)
                for (k, m), d in zip(layers.items(), deltas):
                    if d is None:
                        continue
                    a = seen[k][0][0].float()
                    d2 = d.float().pow(2)
                    if w is not None:
                        d2 = d2 * w[:, None]
                    if f"{k}.weight" in total:
                        total[f"{k}.weight"] += (d2.T @ a.pow(2)).to(total[f"{k}.weight"].dtype)
                    if f"{k}.bias" in total:
                        total[f"{k}.bias"] += d2.sum(0).to(total[f"{k}.bias"].dtype)
        except _NotLinear:
            return weighted_squared_grads(logits_fn, params, x, labels, weights, batch_size)
        finally:
            for h in handles:
                h.remove()
        return total

    return squared_grads


class _NotLinear(Exception):
    """A layer was called more than once or on non-2D input: fall back to vmap."""


FISHER_ESTIMATORS: dict[str, Estimator] = {"batch": batch, "empirical": empirical, "exact": exact, "sampled": sampled}
