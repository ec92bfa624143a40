"""Plots people would rather look at than read: accuracy-matrix heatmap, per-task curves, HAT-family capacities.

The heatmap's colours and the curves' y-axis fit the data by default, so that 0.78 and 0.87 look different;
`scale="fixed"` (or `CLREPRO_PLOT_SCALE=fixed` in the environment) puts them on the whole 0..1 range instead,
which keeps plots of different runs comparable at a glance.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np

SCALES = ("data", "fixed")


def plot_scale(scale: str | None = None) -> str:
    """`scale`, else $CLREPRO_PLOT_SCALE, else "data" (an unknown value reads as "data": a plot setting never
    stops a run that has finished training)."""
    scale = scale or os.environ.get("CLREPRO_PLOT_SCALE") or "data"
    return scale if scale in SCALES else "data"


def _figure(width: float, height: float):
    """A pyplot-free Agg figure (no global state, cheaper than pyplot in a sweep worker)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _title(ax, title: str, default: str, extra: str = "") -> None:
    lines = textwrap.wrap(title or default, int(ax.figure.get_figwidth() * 12)) or [default]
    if extra:
        lines.append(extra)
    ax.set_title("\n".join(lines), fontsize=9, loc="left")


def _data_range(values: np.ndarray, pad: float = 0.02, min_span: float = 0.05) -> tuple[float, float]:
    """[low, high] around the finite values, at least `min_span` wide, inside [0, 1]."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = float(finite.min()) - pad, float(finite.max()) + pad
    if hi - lo < min_span:
        mid = (hi + lo) / 2
        lo, hi = mid - min_span / 2, mid + min_span / 2
    lo, hi = max(0.0, lo), min(1.0, hi)
    if hi - lo < min_span:  # pinned at 0 or 1
        lo, hi = (0.0, min_span) if lo == 0.0 else (1.0 - min_span, 1.0)
    return lo, hi


def _average_accuracy(acc: np.ndarray) -> float | None:
    last = acc[-1][np.isfinite(acc[-1])]
    return float(last.mean()) if last.size else None


def accuracy_heatmap(acc: np.ndarray, path: Path, title: str = "", scale: str | None = None) -> Path:
    """Lower-triangular a[t, N] as a heatmap (rows: after training task N; columns: tested on task t), the
    accuracies in % written in the cells. Colours span the data's range (`scale="data"`) or 0..1 ("fixed")."""
    from matplotlib import colormaps
    from matplotlib.colors import Normalize
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    scale = plot_scale(scale)
    acc = np.asarray(acc, dtype=float)
    rows, T = acc.shape
    vmin, vmax = _data_range(acc, pad=0.005, min_span=0.02) if scale == "data" else (0.0, 1.0)
    norm, cmap = Normalize(vmin, vmax), colormaps["viridis"]
    aa = _average_accuracy(acc)
    extra = (f"AA = {aa * 100:.2f} %   " if aa is not None and rows > 1 else "") + \
        ("colours 0–100 %" if scale == "fixed" else f"colours fit the data ({vmin * 100:.1f}–{vmax * 100:.1f} %)")
    cell = 0.85 if T <= 4 else 0.6 if T <= 10 else 0.4
    left, right, bottom = 0.75, 1.15, 0.55
    ax_w, ax_h = cell * T, cell * rows
    fig_w = max(ax_w + left + right, 5.0)
    wrap = int((fig_w - left - 0.1) * 13)  # characters of a 9-pt title line across the figure
    lines = (textwrap.wrap(title, wrap) if title else ["accuracy a[t, N]"]) + [extra]
    top = 0.2 + 0.19 * len(lines)
    fig = _figure(fig_w, ax_h + bottom + top)
    W, H = fig.get_figwidth(), fig.get_figheight()
    ax = fig.add_axes((left / W, bottom / H, ax_w / W, ax_h / H))
    im = ax.imshow(np.ma.masked_invalid(acc), norm=norm, cmap=cmap, aspect="auto")
    digits = 1 if T <= 10 else 0
    for i in range(rows):
        for j in range(T):
            if np.isfinite(acc[i, j]):
                r, g, b, _ = cmap(norm(acc[i, j]))
                dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
                ax.text(j, i, f"{acc[i, j] * 100:.{digits}f}", ha="center", va="center",
                        fontsize=8 if T <= 10 else 6, color="white" if dark else "black")
    ax.set_xticks(range(T), [str(t + 1) for t in range(T)], fontsize=8 if T <= 10 else 6)
    ax.set_yticks(range(rows), [str(n + 1) for n in range(rows)] if rows > 1 else ["joint"],
                  fontsize=8 if rows <= 10 else 6)
    ax.set_xlabel("tested on task t", fontsize=9)
    ax.set_ylabel("after training task N" if rows > 1 else "", fontsize=9)
    ax.set_title("\n".join(lines), fontsize=9, loc="left")
    cax = fig.add_axes(((left + ax_w + 0.15) / W, bottom / H, 0.15 / W, ax_h / H))
    bar = fig.colorbar(im, cax=cax)
    bar.ax.yaxis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 5, 10]))
    bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v * 100:.0f}"))
    bar.ax.tick_params(labelsize=7)
    bar.set_label("accuracy (%)", fontsize=8)
    fig.savefig(path)
    return path


def _curves_axes(n_series: int):
    """A figure with room on the right for a legend of `n_series` entries (two columns past 12)."""
    wide = n_series > 12
    fig = _figure(8.2 if wide else 7.2, 3.8)
    ax = fig.add_axes((0.08, 0.14, 0.66 if wide else 0.70, 0.72))
    return fig, ax


def _legend(ax, n: int) -> None:
    ax.legend(fontsize=7 if n > 12 else 8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
              ncol=1 if n <= 12 else 2, handlelength=1.6, columnspacing=0.8, borderaxespad=0.0)


def task_curves(acc: np.ndarray, path: Path, title: str = "", scale: str | None = None) -> Path:
    """Each task's accuracy after every training task N ≥ t (one line per task) and the average AA_N."""
    scale = plot_scale(scale)
    acc = np.asarray(acc, dtype=float)
    T = acc.shape[1]
    fig, ax = _curves_axes(T + 1)
    x = np.arange(1, acc.shape[0] + 1)
    colours = _task_colours(T)
    for t in range(T):
        ax.plot(x, acc[:, t], marker="o", markersize=3, linewidth=1.2, color=colours[t], label=f"task {t + 1}" if T <= 12 else f"t{t + 1}")
    aa = np.array([np.nanmean(r) if np.isfinite(r).any() else np.nan for r in acc])
    ax.plot(x, aa, color="black", linewidth=2.4, linestyle="--", label="AA$_N$ (mean)")
    ax.set_ylim(*(_data_range(acc) if scale == "data" else (0.0, 1.0)))
    ax.yaxis.set_major_formatter(_percent())
    ax.set_xticks(x)
    ax.tick_params(labelsize=8)
    ax.grid(True, alpha=0.3)
    ax.set_xlabel("after training task N", fontsize=9)
    ax.set_ylabel("test accuracy (%)", fontsize=9)
    _title(ax, title, "per-task accuracy")
    _legend(ax, T + 1)
    fig.savefig(path)
    return path


def _task_colours(n: int) -> list:
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    return [colormaps["tab20"](i % 20) for i in range(n)]


def _percent():
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _: f"{v * 100:.0f}")


def mask_capacity(task_extras: list[dict], path: Path, title: str = "") -> Path | None:
    """Per layer, the fraction of units used by any task after each task (HAT-family masks)."""
    layers = sorted({k.split("/", 1)[1] for e in task_extras for k in e if k.startswith("mask_capacity/")} - {"all"})
    if not layers:
        return None
    fig, ax = _curves_axes(len(layers) + 1)
    x = np.arange(1, len(task_extras) + 1)
    colours = _task_colours(len(layers))
    for layer, colour in zip(layers, colours):
        ax.plot(x, [e.get(f"mask_capacity/{layer}", np.nan) for e in task_extras], marker="o", markersize=3,
                linewidth=1.2, color=colour, label=layer)
    ax.plot(x, [e.get("mask_capacity/all", np.nan) for e in task_extras], color="black", linewidth=2.4,
            linestyle="--", label="all layers")
    ax.set_ylim(0, 1.02)
    ax.yaxis.set_major_formatter(_percent())
    ax.set_xticks(x)
    ax.tick_params(labelsize=8)
    ax.grid(True, alpha=0.3)
    ax.set_xlabel("after training task N", fontsize=9)
    ax.set_ylabel("units used by any task (%)", fontsize=9)
    _title(ax, title, "mask capacity")
    _legend(ax, len(layers) + 1)
    fig.savefig(path)
    return path


def network_capacity(task_extras: list[dict], path: Path, title: str = "") -> Path | None:
    """The reference's network capacity per task: the mean gradient adjustment rate over all masked parameters
    (1 = every parameter free to learn, 0 = all frozen), averaged over the task's steps and at its last step."""
    if not any("network_capacity" in e for e in task_extras):
        return None
    fig, ax = _curves_axes(2)
    x = np.arange(1, len(task_extras) + 1)
    ax.plot(x, [e.get("network_capacity", np.nan) for e in task_extras], color="black", marker="o",
            linewidth=2.2, label="mean over\nthe task's steps")
    ax.plot(x, [e.get("network_capacity/end", np.nan) for e in task_extras], color="tab:red", marker=".",
            linestyle="--", linewidth=1.4, label="at the task's\nlast step")
    ax.set_ylim(0, 1.02)
    ax.set_xticks(x)
    ax.tick_params(labelsize=8)
    ax.grid(True, alpha=0.3)
    ax.set_xlabel("training task N", fontsize=9)
    ax.set_ylabel("mean adjustment rate a\n(1 = free, 0 = frozen)", fontsize=9)
    _title(ax, title, "network capacity")
    _legend(ax, 2)
    fig.savefig(path)
    return path


def style_optuna_axes(ax, kind: str, sweep: str, metric: str, mode: str) -> None:
    """Optuna's matplotlib plots, titled with the sweep and its objective: `history` (x = Optuna's trial
    number k, whose MLflow run is named tk, e.g. t007) or `importances`."""
    from matplotlib.ticker import MaxNLocator

    for loc in ("left", "center", "right"):  # Optuna's own title
        ax.set_title("", loc=loc)
    if kind == "history":
        ax.set_title(f"{sweep}: {metric} of each trial ({'higher' if mode == 'max' else 'lower'} is better)",
                     fontsize=11)
        legend = ax.get_legend()
        names = {"Objective Value": f"{metric} of the trial", "Best Value": "best so far"}
        for text in (legend.get_texts() if legend is not None else []):
            text.set_text(names.get(text.get_text(), text.get_text()))
        ax.set_xlabel("trial k (its MLflow run is named tk, e.g. t007)")
        ax.set_ylabel(f"{metric}, mean over the tune seeds" + (" (%)" if metric != "DD" else ""))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if metric != "DD":
            ax.yaxis.set_major_formatter(_percent_fine())
    else:
        ax.set_title(f"{sweep}: hyperparameter importance for {metric}", fontsize=11)
        legend = ax.get_legend()
        if legend is not None:
            legend.remove()


def _percent_fine():
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _: f"{v * 100:.1f}")
