"""Tables: aggregation on hand-made runs, published comparison, LaTeX shape, CI drift detection."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from clrepro.tables.aggregate import Cell, Published
from clrepro.tables.render import latex_escape, to_csv, to_latex, to_markdown
from clrepro.tables.sources import RunReader
from clrepro.tables.spec import load_table
from clrepro.tables.table import build_table

ROOT = Path(__file__).resolve().parents[1]


def make_runs(folder: Path, approach: str, values: list[dict]) -> None:
    for seed, metrics in enumerate(values, start=1):
        d = folder / approach / f"seed{seed}"
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps(metrics))
        (d / "manifest.json").write_text(json.dumps({"seed": seed}))


@pytest.fixture
def spec_file(tmp_path):
    make_runs(tmp_path / "runs", "hat", [{"AA": 0.80, "BWT": 0.0}, {"AA": 0.84, "BWT": -0.01}, {"AA": 0.82, "BWT": None}])
    make_runs(tmp_path / "runs", "ft", [{"AA": 0.70, "BWT": -0.2}])
    (tmp_path / "pub.csv").write_text("approach,benchmark,metric,mean,std\nHAT & co,pm,AA,81.0,1.5\n"
                                      "Finetuning_1,pm,AA,60.0,2.0\n")
    spec = {"title": "Test table 100%", "published": "pub.csv", "published_n": {"pm": 5},
            "columns": [{"benchmark": "pm", "metric": "AA"}, {"benchmark": "pm", "metric": "BWT"}],
            "rows": [{"label": "HAT & co", "runs": {"pm": {"folders": "runs/hat/*"}}},
                     {"label": "Finetuning_1", "runs": {"pm": {"folders": "runs/ft/*"}}},
                     {"label": "LwF", "note": "not built yet"}],
            "tolerance": {"rule": "std", "value": 1.0}}
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_aggregation_on_hand_made_runs(spec_file):
    table = build_table(load_table(spec_file), RunReader("sqlite:///nowhere.db"))
    hat_aa, hat_bwt = table.cells[0]
    assert hat_aa.values == pytest.approx([80.0, 84.0, 82.0])
    assert (hat_aa.n, hat_aa.mean, hat_aa.std) == (3, pytest.approx(82.0), pytest.approx(2.0))  # ddof = 1
    assert hat_bwt.n == 2 and hat_bwt.mean == pytest.approx(-0.5) and hat_bwt.std == pytest.approx(0.5 ** 0.5)
    ft_aa = table.cells[1][0]
    assert ft_aa.n == 1 and ft_aa.std is None  # one seed: no std
    lwf = table.cells[2]
    assert all(c.n == 0 and c.mean is None for c in lwf) and table.row_notes[2] == "not built yet"
    # published comparison: Δ, tolerance (|Δ| ≤ 1 × published std) and Welch's t-test
    assert hat_aa.delta == pytest.approx(1.0) and hat_aa.within is True
    assert ft_aa.delta == pytest.approx(10.0) and ft_aa.within is False
    from scipy.stats import ttest_ind_from_stats

    expected_p = ttest_ind_from_stats(82.0, 2.0, 3, 81.0, 1.5, 5, equal_var=False).pvalue
    assert hat_aa.p_value == pytest.approx(expected_p)
    assert ft_aa.p_value is None  # n = 1
    md = to_markdown(table)
    assert "82.00 ± 2.00 (n=3) / 81.00 ± 1.50 ✓" in md and "LwF ¹" in md and "¹ LwF: not built yet" in md
    csv_text = to_csv(table)
    assert "HAT & co,pm,AA,3,82.0000,2.0000,81.0,1.5,5,1.0000,True," in csv_text
    assert "LwF,pm,AA,0,,," in csv_text


def test_cell_verdict_rules():
    cell = Cell([10.0, 12.0], Published(10.0, None, None), "points", 1.5)
    assert cell.delta == pytest.approx(1.0) and cell.within is True
    assert Cell([10.0, 12.0], Published(10.0, None, None), "std", 1.0).within is None  # no published std
    assert Cell([10.0, 12.0], Published(10.0, 1.0, 5), "none", 1.0).within is None


def test_latex_is_balanced_and_escaped(spec_file):
    tex = to_latex(build_table(load_table(spec_file), RunReader("sqlite:///nowhere.db")))
    for env in ("table", "tabular"):
        assert tex.count(rf"\begin{{{env}}}") == tex.count(rf"\end{{{env}}}") == 1
    assert tex.index(r"\begin{tabular}") < tex.index(r"\toprule") < tex.index(r"\midrule") < tex.index(r"\bottomrule")
    assert tex.count("{") == tex.count("}")
    assert r"HAT \& co" in tex and r"Finetuning\_1" in tex and r"100\%" in tex
    assert r"\textbf{82.00 $\pm$ 2.00}" in tex  # best AA of the column in bold
    body = [l for l in tex.splitlines() if l.endswith(r"\\") and not l.startswith(("Approach", " &"))]
    assert len(body) == 3 and all(len(re.findall(r"(?<!\\)&", l)) == 4 for l in body)  # label + 2 × (ours, paper)
    assert re.search(r"(?<!\\)[&%_#]", latex_escape("a & b_c % d # e").replace(r"\&", "").replace(r"\_", "")
                     .replace(r"\%", "").replace(r"\#", "")) is None


def test_bad_table_spec_is_one_line_exit_2(tmp_path, spec_file):
    spec = yaml.safe_load(spec_file.read_text())
    spec["columns"][0]["metric"] = "ACC"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(spec))
    p = subprocess.run([sys.executable, "-m", "clrepro", "table", str(bad)], capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.strip() == (f"error: {bad}: columns[0].metric: 'ACC' is not allowed "
                                "(allowed: AA, BWT, FWT, FR, AA_remaining, DD, AGR)")


def test_sweep_selector_reads_the_final_group_of_the_latest_sweep(tmp_path):
    from clrepro.tracking.mlflow_store import GROUP, LEVEL, SEED, SWEEP, TAG, TRIAL_ID, MlflowStore

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    store = MlflowStore(uri)
    store.ensure_experiment("sw")

    def sweep(aa_values, finished=True):
        parent = store.create_run("sweep", {LEVEL: "sweep", SWEEP: "sw"})
        for rank, values in ((1, aa_values), (2, [0.1])):
            trial = store.create_run("t", {LEVEL: "trial", SWEEP: "sw", TRIAL_ID: f"final{rank}", GROUP: "final",
                                           TAG + "rank": rank}, parent=parent)
            for seed, aa in enumerate(values, start=11):
                run = store.create_run("s", {LEVEL: "seed", GROUP: "final", SEED: seed}, parent=trial)
                store.log_metrics(run, {"AA": aa})
                store.set_status(run, "FINISHED")
            store.set_status(trial, "FINISHED")
        if finished:
            store.set_status(parent, "FINISHED")

    sweep([0.5, 0.6])
    sweep([0.7, 0.8, 0.9])  # the latest finished sweep wins
    sweep([0.0], finished=False)  # an unfinished one is ignored
    spec = {"title": "t", "tracking_uri": uri, "columns": [{"benchmark": "b", "metric": "AA"}],
            "rows": [{"label": "HAT", "runs": {"b": {"sweep": "sw", "group": "final"}}}]}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    table = build_table(load_table(tmp_path / "s.yaml"))
    cell = table.cells[0][0]
    assert cell.values == pytest.approx([70.0, 80.0, 90.0]) and cell.std == pytest.approx(10.0)
    assert [s.seed for s in table.origins[0][0]] == [11, 12, 13]


def _ci_compare():
    sys.path.insert(0, str(ROOT / "ci"))
    from regenerate_tables import compare

    return compare


def _with_cell(lines: list[str], i: int, **values) -> str:
    """The expected CSV with line i's columns replaced (mean/std/n by name)."""
    cols = lines[0].split(",")
    row = lines[i].split(",")
    for k, v in values.items():
        row[cols.index(k)] = str(v)
    return "\n".join([*lines[:i], ",".join(row), *lines[i + 1:]])


def test_ci_regeneration_fails_when_a_number_drifts():
    compare = _ci_compare()
    expected = (ROOT / "paper_tables" / "ci" / "expected" / "fg_adahat.csv").read_text()
    lines = expected.splitlines()
    assert compare("fg", expected, expected, 0.5) == ([], [])
    mean = float(lines[1].split(",")[4])
    assert compare("fg", _with_cell(lines, 1, mean=f"{mean + 0.3:.4f}"), expected, 0.5) == ([], [])
    problems, notes = compare("fg", _with_cell(lines, 1, mean=f"{mean + 1.3:.4f}"), expected, 0.5)
    assert len(problems) == 1 and "machine kind that wrote it" in problems[0] and notes == []
    assert any("n is '2'" in p for p in compare("fg", _with_cell(lines, 1, n=2), expected, 0.5)[0])


def test_on_another_machine_kind_a_cell_passes_only_as_seed_noise():
    """Finetuning AA 36.29 ± 1.21 (n 5) expected: +1.3 is seed noise there, +5 (6.5 standard errors) is drift; a seed lost never passes."""
    compare = _ci_compare()
    expected = (ROOT / "paper_tables" / "ci" / "expected" / "fg_adahat.csv").read_text()
    lines = expected.splitlines()
    assert lines[1].startswith("Finetuning,pmnist_embedded,AA,5,36.2935,1.2097")
    problems, notes = compare("fg", _with_cell(lines, 1, mean="37.5935"), expected, 0.5, same_machine=False)
    assert problems == [] and len(notes) == 1 and "seed noise" in notes[0] and "36.2935 -> 37.5935" in notes[0]
    problems, notes = compare("fg", _with_cell(lines, 1, mean="41.2935"), expected, 0.5, same_machine=False)
    assert len(problems) == 1 and "beyond seed noise" in problems[0] and notes == []
    # a std twice as large is within what 5 seeds can show; twenty times is not
    assert compare("fg", _with_cell(lines, 1, std="2.4194"), expected, 0.5, same_machine=False)[0] == []
    assert compare("fg", _with_cell(lines, 1, std="24.194"), expected, 0.5, same_machine=False)[0] != []
    # HAT's BWT is 0 ± 0 in every seed: no spread to call noise, so ±0.5 holds on any machine
    hat_bwt = next(i for i, ln in enumerate(lines) if ln.startswith("HAT,pmnist_embedded,BWT"))
    problems, _ = compare("fg", _with_cell(lines, hat_bwt, mean="-1.0000"), expected, 0.5, same_machine=False)
    assert len(problems) == 1 and "untestable" in problems[0]
    assert compare("fg", _with_cell(lines, 1, n=4), expected, 0.5, same_machine=False)[0] != []


def test_the_machine_kind_is_recorded_and_matched(tmp_path):
    sys.path.insert(0, str(ROOT / "ci"))
    import json

    from regenerate_tables import machine_kind, same_machine_as

    kind = machine_kind()
    assert kind["torch_cpu_capability"] and kind["torch"] and kind["cpu_flags_sha1"]
    f = tmp_path / "t.csv"
    assert not same_machine_as(f)  # nothing recorded: another machine kind
    (tmp_path / "t.machine.json").write_text(json.dumps(kind))
    assert same_machine_as(f)
    (tmp_path / "t.machine.json").write_text(json.dumps({**kind, "torch_cpu_capability": "NO AVX"}))
    assert not same_machine_as(f)


def test_gain_rows_are_per_seed_differences_and_dd_is_lower_is_better(tmp_path):
    make_runs(tmp_path / "runs", "host", [{"AA": 0.80, "DD": 0.30}, {"AA": 0.84, "DD": 0.20}, {"AA": 0.82, "DD": 0.25}])
    make_runs(tmp_path / "runs", "fl", [{"AA": 0.83, "DD": 0.10}, {"AA": 0.84, "DD": 0.50}])  # seeds 1, 2 only
    spec = {"title": "gain", "columns": [{"benchmark": "pm", "metric": "AA"}, {"benchmark": "pm", "metric": "DD"}],
            "rows": [{"label": "host", "runs": {"pm": {"folders": "runs/host/*"}}},
                     {"label": "FL", "runs": {"pm": {"folders": "runs/fl/*"}}},
                     {"label": "gain", "gain_of": "FL", "gain_over": "host"}],
            "tolerance": {"rule": "none"}}
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(spec))
    table = build_table(load_table(path), RunReader("sqlite:///nowhere.db"))
    gain_aa, gain_dd = table.cells[2]
    assert gain_aa.values == pytest.approx([3.0, 0.0])  # paired by seed: seed 3 has no FL run
    assert gain_dd.values == pytest.approx([-20.0, 30.0])
    from clrepro.tables.render import _best_per_column

    assert _best_per_column(table) == [1, 0]  # AA: FL 83.5 > host 82; DD (lower is better): host 25 < FL 30
    bad = dict(spec, rows=spec["rows"][:2] + [{"label": "gain", "gain_of": "FL", "gain_over": "nope"}])
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(Exception, match="no row 'nope'"):
        load_table(path)


def test_sweep_variants_expand_into_named_sweeps():
    from clrepro.errors import ConfigError
    from clrepro.sweep.spec import load_sweep, load_sweeps

    specs = load_sweeps(ROOT / "sweeps" / "ewc_si_embedded.yaml")
    assert [s.name for s in specs] == ["ewc_si_embedded-ewc", "ewc_si_embedded-online_ewc", "ewc_si_embedded-si"]
    si = load_sweep(ROOT / "sweeps" / "ewc_si_embedded.yaml", "si")
    assert si.experiment.overrides == ["algorithm=si"] and list(si.search_space) == ["algorithm.c"]
    assert set(specs[1].search_space) == {"algorithm.parameter_change_reg_factor", "algorithm.gamma"}
    with pytest.raises(ConfigError, match="choose one"):
        load_sweep(ROOT / "sweeps" / "ewc_si_embedded.yaml")


def test_parallel_production_gives_the_tables_a_single_process_gives(tmp_path):
    """`--jobs 2` (each seed run in its own process with one torch thread) against the same runs in this process
    with one thread: the same CSV."""
    import torch

    from clrepro.tables.produce import produce_missing
    from conftest import TINY

    overrides = [*TINY, "trainer.epochs=1", "trainer.batch_size=64"]
    spec = {"title": "jobs", "columns": [{"benchmark": "pd", "metric": m} for m in ("AA", "BWT", "FWT")],
            "rows": [{"label": "Finetuning", "runs": {"pd": {"experiment": "finetuning_pmnist", "overrides": overrides,
                                                             "seeds": [1, 2, 3]}}},
                     {"label": "EWC", "runs": {"pd": {"experiment": "finetuning_pmnist", "seeds": [1, 2, 3],
                                                      "overrides": [*overrides, "algorithm=ewc"]}}}]}
    csvs = []
    threads = torch.get_num_threads()
    for jobs in (1, 2):
        d = tmp_path / f"jobs{jobs}"
        d.mkdir()
        (d / "t.yaml").write_text(yaml.safe_dump({**spec, "tracking_uri": f"sqlite:///{d}/mlflow.db"}))
        table_spec = load_table(d / "t.yaml")
        logged = []
        torch.set_num_threads(1)
        try:
            made = produce_missing(table_spec, RunReader(table_spec.tracking_uri), log=logged.append, jobs=jobs)
        finally:
            torch.set_num_threads(threads)
        assert made == 6
        assert any("2 at a time" in m for m in logged) == (jobs == 2)
        csvs.append(to_csv(build_table(table_spec, RunReader(table_spec.tracking_uri))))
    assert csvs[0] == csvs[1]
    assert "Finetuning" in csvs[0] and ",3," in csvs[0]  # n = 3 seeds per cell


@pytest.mark.parametrize("path", sorted((ROOT / "paper_tables").glob("**/*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_table_names_experiments_and_sweeps_that_load(path):
    """Each table's rows compose (experiment + overrides, sweep files and names), as `--run` checks before its
    first run: an override that a config change made invalid fails here, not an hour into `make tables`."""
    from clrepro.tables.produce import check_sources

    check_sources(load_table(path))


@pytest.mark.parametrize("var,value", [("CLREPRO_TABLE_ALPHA", "abc"), ("CLREPRO_TABLE_ALPHA", "1.5"),
                                       ("CLREPRO_TABLE_ALPHA", "0"), ("CLREPRO_TABLE_ATOL", "-1"),
                                       ("CLREPRO_TABLE_ATOL", "nan")])
def test_ci_regeneration_refuses_a_bad_tolerance_in_one_line_before_any_run(var, value, tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "ci" / "regenerate_tables.py")], capture_output=True, text=True,
                       env={**os.environ, var: value}, cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [f"error: ${var}={value!r}: allowed: "
                                             + ("a number in (0, 1)" if var.endswith("ALPHA") else "a number ≥ 0")]
