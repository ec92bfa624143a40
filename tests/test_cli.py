"""The command line: bad input is one line with exit code 2; metrics JSON; run folder; fast --help."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clrepro.config.load import load_experiment, validate
from clrepro.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "clrepro"]


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.parametrize("args, expected", [
    (["run", "nope"], "experiment: unknown experiment 'nope' (allowed: adahat_paper/adahat_pmnist20, "),
    (["run", "hat_pmnist", "algorithm=sgdx"], "algorithm: unknown option 'sgdx' (allowed: "),
    (["run", "hat_pmnist", "algorithm.s_maxx=3"], "algorithm.s_maxx: unknown key"),
    (["run", "hat_pmnist", "+algorithm.s_maxx=3"], "algorithm.s_maxx: unknown key (allowed: adjustment_mode, "),
    (["run", "hat_pmnist", "trainer.epochs=two"], "trainer.epochs: expected an integer, got 'two'"),
    (["run", "hat_pmnist", "algorithm.s_max=0.5"], "algorithm.s_max: 0.5 is out of range (allowed: [1.0, 1000000.0])"),
    (["run", "hat_pmnist", "algorithm.adjustment_mode=foo"], "algorithm.adjustment_mode: 'foo' is not allowed"),
    (["run", "hat_pmnist", "scenario=XIL"], "scenario: 'XIL' is not allowed (allowed: TIL, CIL, DIL)"),
    (["run", "hat_pmnist", "backbone=mlp"], "backbone.name: 'mlp' has no HAT masks"),
    (["run", "hat_pmnist", "benchmark.source=imagenet"], "benchmark.source: 'imagenet' is not allowed (allowed: mnist_embedded, digits, mnist"),
    (["run", "hat_pmnist", "+algorithm._target_=os.system"],
     "algorithm._target_: 'os.system' is not a registered clrepro algorithm"),
    (["run", "missing/file.yaml"], "missing/file.yaml: experiment file not found"),
    (["metrics", "does_not_exist.csv"], "does_not_exist.csv"),
])
def test_bad_input_is_one_line_with_exit_code_2(args, expected):
    p = cli(*args)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert expected in lines[0], lines[0]
    if args[0] == "run" and "file" not in args[1]:
        assert "configs/experiment/" in lines[0]  # names the file


def test_target_resolves_only_to_registered_classes(tiny):
    from clrepro.algorithms.hat import HAT
    from clrepro.config.load import components

    cfg = tiny("hat_pmnist")
    cfg.algorithm = {"_target_": "clrepro.algorithms.hat.HAT"}
    assert components(cfg).algorithm_cls is HAT
    cfg.algorithm = {"_target_": "subprocess.Popen"}
    with pytest.raises(ConfigError, match="not a registered"):
        components(cfg)


def test_yaml_path_experiment_and_overrides(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("# @package _global_\ndefaults:\n  - override /algorithm: hat\n  - override /backbone: hat_mlp\n"
                 "seed: 7\nalgorithm:\n  s_max: 200\n")
    cfg = load_experiment(str(f), ["trainer.epochs=1"])
    assert (cfg.name, cfg.seed, cfg.algorithm["s_max"], cfg.trainer.epochs) == ("mine", 7, 200, 1)
    bad = tmp_path / "bad.yaml"
    bad.write_text("# @package _global_\ntrainer:\n  epochs: -1\n")
    with pytest.raises(ConfigError) as e:
        load_experiment(str(bad))
    assert str(e.value).startswith(f"{bad}: trainer.epochs: -1 is out of range")


def test_validate_rejects_unknown_top_level_key():
    raw = {"benchmark": {"name": "permuted"}, "backbone": {"name": "mlp"}, "algorithm": {"name": "finetuning"},
           "epochz": 3}
    with pytest.raises(ConfigError, match="epochz: unknown key"):
        validate(raw, "x.yaml")


def test_metrics_command_prints_json(tmp_path):
    (tmp_path / "acc.csv").write_text("after_training_task,average_accuracy,test_on_task_1,test_on_task_2\n"
                                      "1,0.9,0.9,\n2,0.8,0.7,0.9\n")
    (tmp_path / "ind.csv").write_text("after_training_task,average_accuracy,test_on_task_1,test_on_task_2\n"
                                      "1,0.9,0.9,\n2,0.9,0.9,0.95\n")
    (tmp_path / "joint.csv").write_text("average_accuracy,test_on_task_1,test_on_task_2\n0.95,0.95,0.95\n")
    (tmp_path / "rand.csv").write_text("after_training_task,average_accuracy,test_on_task_1,test_on_task_2\n"
                                       "1,0.1,0.1,\n2,0.1,0.1,0.1\n")
    p = cli("metrics", str(tmp_path / "acc.csv"), "--independent", str(tmp_path / "ind.csv"),
            "--joint", str(tmp_path / "joint.csv"), "--random", str(tmp_path / "rand.csv"))
    assert p.returncode == 0, p.stderr
    m = json.loads(p.stdout)
    assert m["AA"] == pytest.approx(0.8)
    assert m["BWT"] == pytest.approx(-0.2)
    assert m["FWT"] == pytest.approx(-0.05)
    assert m["FR"] == pytest.approx(((0.6 / 0.85) + (0.8 / 0.85)) / 2 - 1)
    only = json.loads(cli("metrics", str(tmp_path / "acc.csv")).stdout)
    assert only["FWT"] is None and only["FR"] is None and only["BWT"] == pytest.approx(-0.2)


def test_run_writes_the_run_folder(tmp_path):
    out = tmp_path / "run"
    p = cli("run", "hat_pmnist", "benchmark=pdigits", "benchmark.num_tasks=2", "backbone.hidden=[32,16]",
            "trainer.batch_size=64", "--out", str(out), "--quiet")
    assert p.returncode == 0, p.stderr
    assert "metrics (%)" in p.stdout and "FR" in p.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["references"]) == {"independent", "joint", "random"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert {"seed", "config_hash", "packages", "git", "device", "wall_seconds"} <= set(manifest)
    assert manifest["packages"]["torch"].startswith("2.")
    assert "algorithm:" in (out / "config.yaml").read_text()


def test_help_is_fast_and_run_imports_neither_ray_nor_mlflow(tmp_path):
    t0 = time.perf_counter()
    assert cli("--help").returncode == 0
    assert time.perf_counter() - t0 < 1.5  # < 1 s on an idle machine; slack for a loaded CI box
    code = ("import sys; from clrepro.cli.main import main; "
            "main(['run','hat_pmnist','benchmark=pdigits','benchmark.num_tasks=1','metrics=[AA]','--quiet',"
            "'--out',sys.argv[1]]); "
            "print(sorted(m for m in ('ray','mlflow','optuna') if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], capture_output=True, text=True, cwd=ROOT,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == "[]"
