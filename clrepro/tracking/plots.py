"""Plots people would rather look at than read: accuracy-matrix heatmap and per-task accuracy curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _figure(width: float, height: float):
    """A pyplot-free Agg figure (no global state, cheaper than pyplot in a sweep worker)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=90)
    FigureCanvasAgg(fig)
    return fig


def accuracy_heatmap(acc: np.ndarray, path: Path, title: str = "") -> Path:
    """Lower-triangular a[t, N] as a heatmap on a 0..1 scale, values written in the cells (metrics.md §4.2)."""
    T = acc.shape[1]
    rows = acc.shape[0]
    fig = _figure(1.6 + 0.55 * T, 1.2 + 0.5 * rows)
    ax = fig.add_axes((0.16, 0.16, 0.68, 0.72))
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
    fig.colorbar(im, cax=fig.add_axes((0.87, 0.16, 0.03, 0.72)))
    fig.savefig(path)
    return path


def task_curves(acc: np.ndarray, path: Path, title: str = "") -> Path:
    """Each task's accuracy over training (one line per task) and the average accuracy AA_N."""
    T = acc.shape[1]
    fig = _figure(6, 3.5)
    ax = fig.add_axes((0.1, 0.14, 0.86, 0.76))
    x = np.arange(1, acc.shape[0] + 1)
    for t in range(T):
        ax.plot(x, acc[:, t], marker=".", linewidth=1, label=f"task {t + 1}")
    ax.plot(x, np.nanmean(acc, axis=1), color="black", linewidth=2.5, label="AA")
    ax.set_ylim(0, 1)
    ax.set_xticks(x)
    ax.set_xlabel("after training task N")
    ax.set_ylabel("test accuracy")
    ax.set_title(title or "per-task accuracy", fontsize=9)
    ax.legend(fontsize=6, ncol=2 if T > 8 else 1, loc="lower left")
    fig.savefig(path)
    return path


def mask_capacity(task_extras: list[dict], path: Path, title: str = "") -> Path | None:
    """Per layer, the fraction of units used by any task after each task (HAT-family masks)."""
    layers = sorted({k.split("/", 1)[1] for e in task_extras for k in e if k.startswith("mask_capacity/")} - {"all"})
    if not layers:
        return None
    fig = _figure(6, 3.5)
    ax = fig.add_axes((0.1, 0.14, 0.86, 0.76))
    x = np.arange(1, len(task_extras) + 1)
    for layer in layers:
        ax.plot(x, [e.get(f"mask_capacity/{layer}", np.nan) for e in task_extras], marker=".", label=layer)
    ax.plot(x, [e.get("mask_capacity/all", np.nan) for e in task_extras], color="black", linewidth=2.5, label="all")
    ax.set_ylim(0, 1.02)
    ax.set_xticks(x)
    ax.set_xlabel("after training task N")
    ax.set_ylabel("units used by any task")
    ax.set_title(title or "mask capacity", fontsize=9)
    ax.legend(fontsize=6, loc="lower right")
    fig.savefig(path)
    return path


def network_capacity(task_extras: list[dict], path: Path, title: str = "") -> Path | None:
    """The reference's network capacity per task: the mean gradient adjustment rate over all masked parameters
    (1 = every parameter free to learn, 0 = all frozen), averaged over the task's steps and at its last step."""
    if not any("network_capacity" in e for e in task_extras):
        return None
    fig = _figure(6, 3.5)
    ax = fig.add_axes((0.1, 0.14, 0.86, 0.76))
    x = np.arange(1, len(task_extras) + 1)
    ax.plot(x, [e.get("network_capacity", np.nan) for e in task_extras], color="black", marker="o",
            linewidth=2, label="mean over the task's steps")
    ax.plot(x, [e.get("network_capacity/end", np.nan) for e in task_extras], color="tab:red", marker=".",
            linestyle="--", label="at the task's last step")
    ax.set_ylim(0, 1.02)
    ax.set_xticks(x)
    ax.set_xlabel("training task N")
    ax.set_ylabel("mean adjustment rate a")
    ax.set_title(title or "network capacity", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    fig.savefig(path)
    return path
