"""Plots people would rather look at than read: accuracy-matrix heatmap and per-task accuracy curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def accuracy_heatmap(acc: np.ndarray, path: Path, title: str = "") -> Path:
    """Lower-triangular a[t, N] as a heatmap on a 0..1 scale, values written in the cells (metrics.md §4.2)."""
    plt = _pyplot()
    T = acc.shape[1]
    rows = acc.shape[0]
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * T, 0.8 + 0.5 * rows), dpi=110)
    im = ax.imshow(np.ma.masked_invalid(acc), vmin=0, vmax=1, cmap="viridis")
    for i in range(rows):
        for j in range(T):
            if np.isfinite(acc[i, j]):
                ax.text(j, i, f"{acc[i, j] * 100:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if acc[i, j] < 0.6 else "black")
    ax.set_xticks(range(T), [str(t + 1) for t in range(T)])
    ax.set_yticks(range(rows), [str(n + 1) for n in range(rows)] if rows > 1 else ["joint"])
    ax.set_xlabel("tested on task t")
    ax.set_ylabel("after training task N")
    ax.set_title(title or "accuracy a[t, N]", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def task_curves(acc: np.ndarray, path: Path, title: str = "") -> Path:
    """Each task's accuracy over training (one line per task) and the average accuracy AA_N."""
    plt = _pyplot()
    T = acc.shape[1]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    x = np.arange(1, acc.shape[0] + 1)
    for t in range(T):
        ax.plot(x, acc[:, t], marker=".", linewidth=1, label=f"task {t + 1}")
    ax.plot(x, np.nanmean(acc, axis=1), color="black", linewidth=2.5, label="AA")
    ax.set_ylim(0, 1)
    ax.set_xlabel("after training task N")
    ax.set_ylabel("test accuracy")
    ax.set_title(title or "per-task accuracy", fontsize=9)
    ax.legend(fontsize=6, ncol=2 if T > 8 else 1, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
