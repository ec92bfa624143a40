"""Every shipped experiment, sweep file and table spec validates (a typo in a shipped file fails here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from clrepro.config.load import experiment_names, load_experiment

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", experiment_names())
def test_experiment_configs_validate(name):
    cfg = load_experiment(name)
    assert cfg.name


@pytest.mark.parametrize("path", sorted((ROOT / "sweeps").glob("*.yaml")) + sorted((ROOT / "benchmarks").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_sweep_files_validate(path):
    from clrepro.sweep.runner import base_config
    from clrepro.sweep.spec import load_sweeps

    for spec in load_sweeps(path):  # each variant of a file with `variants:`
        base_config(spec, str(path))  # every search-space key exists and every probe value validates


@pytest.mark.parametrize("path", sorted((ROOT / "paper_tables").rglob("*.yaml")), ids=lambda p: p.name)
def test_table_specs_validate(path):
    from clrepro.tables.spec import load_table

    spec = load_table(path)
    assert spec.rows and spec.columns


def test_paper_baselines_run_on_the_reference_batch_norm_mlp():
    """The FG-AdaHAT/AdaHAT papers' Finetuning and LwF rows used the reference's CLMLP with BatchNorm shared by all
    tasks; their references (independent, joint, random) are derived from the same backbone."""
    from clrepro.config.load import load_experiment
    from clrepro.engine.references import reference_config

    for name in ("finetuning_pmnist", "lwf_pmnist", "finetuning_pmnist20", "lwf_pmnist20"):
        cfg = load_experiment(name)
        assert cfg.backbone["name"] == "mlp" and cfg.backbone["batch_norm"] is True, name
        for kind in ("independent", "joint", "random"):
            assert reference_config(cfg, kind).backbone["batch_norm"] is True
    assert load_experiment("finetuning_pmnist", ["backbone=mlp"]).backbone["batch_norm"] is False  # the named option


def test_fg_adahat_published_rows_run_the_papers_fixed_configs():
    """Rows beside published numbers come from the paper's configs on seeds 1..10; tuned rows are labelled."""
    from clrepro.tables.spec import load_table

    spec = load_table("paper_tables/fg_adahat.yaml")
    for row in spec.rows:
        for cell in row.runs.values():
            if "tuned" in row.label:
                assert cell.sweep is not None
            else:
                assert cell.experiment is not None and list(cell.seeds) == list(range(1, 11)), row.label
    assert {"HAT (tuned)", "AdaHAT (tuned)"} <= {r.label for r in spec.rows}


def test_adahat_paper_baselines_carry_the_papers_weight_decay():
    """The AdaHAT paper's non-HAT baselines use Adam with weight_decay 3.5e-4; its HAT family uses none."""
    from clrepro.config.load import experiment_names, load_experiment

    names = [n for n in experiment_names() if n.startswith("adahat_paper/")]
    assert len(names) == 10
    for name in names:
        cfg = load_experiment(name)
        hat_family = cfg.algorithm["name"] in ("hat", "adahat")
        assert cfg.optimizer.weight_decay == (0.0 if hat_family else 3.5e-4), name
        assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.trainer.epochs, cfg.trainer.batch_size) == ("adam", 1e-3, 2, 128)
        assert cfg.backbone["batch_norm"] is (not hat_family), name
