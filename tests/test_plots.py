"""Plots: the heatmap's colours fit the data unless a fixed 0–1 scale is asked for; titles name the run."""

from __future__ import annotations

import numpy as np

from clrepro.tracking import plots


def test_heatmap_scale_fits_the_data_or_is_fixed(tmp_path, monkeypatch):
    acc = np.array([[0.87, np.nan, np.nan], [0.86, 0.78, np.nan], [0.85, 0.79, 0.80]])
    assert plots._data_range(acc, pad=0.005, min_span=0.02) == (0.775, 0.875)
    assert plots._data_range(np.array([[1.0]]), min_span=0.05) == (0.95, 1.0)  # pinned at 1, still 5 points wide
    monkeypatch.delenv("CLREPRO_PLOT_SCALE", raising=False)
    fit = plots.accuracy_heatmap(acc, tmp_path / "fit.png", "t007 seed=1: s_max=200 lr=8.4e-3")
    fixed = plots.accuracy_heatmap(acc, tmp_path / "fixed.png", "t007 seed=1: s_max=200 lr=8.4e-3", scale="fixed")
    monkeypatch.setenv("CLREPRO_PLOT_SCALE", "fixed")
    by_env = plots.accuracy_heatmap(acc, tmp_path / "env.png", "t007 seed=1: s_max=200 lr=8.4e-3")
    assert fit.read_bytes() != fixed.read_bytes() and fixed.read_bytes() == by_env.read_bytes()
    monkeypatch.setenv("CLREPRO_PLOT_SCALE", "bogus")  # a plot setting never stops a finished run
    assert plots.plot_scale() == "data"
    assert plots.task_curves(acc, tmp_path / "curves.png", "x").stat().st_size > 1000
    wide = np.tril(np.full((20, 20), 0.8))
    wide[np.triu_indices(20, 1)] = np.nan
    assert plots.task_curves(wide, tmp_path / "curves20.png", "20 tasks").stat().st_size > 1000


def test_optuna_axes_are_titled_with_the_sweep():
    from matplotlib.figure import Figure

    ax = Figure().add_subplot()
    ax.plot([0, 1], [0.7, 0.8], label="Objective Value")
    ax.legend()
    ax.set_title("Optimization History Plot")
    plots.style_optuna_axes(ax, "history", "quickstart", "AA", "max")
    assert ax.get_title() == "quickstart: AA of each trial (higher is better)"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["AA of the trial"]
    assert "t007" in ax.get_xlabel()
