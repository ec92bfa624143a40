"""Hostile input, as a new user would type it: every case exits 2 with at most 4 lines, no traceback, and no
side effect (nothing written in the working folder or the temporary folder, no run overwritten).

Most cases run in-process through `clrepro.cli.main.main` (each fails in validation, well under a second); a
representative subset runs as real `clrepro` subprocesses in a fresh working folder.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from clrepro.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
CLREPRO = shutil.which("clrepro", path=str(Path(sys.executable).parent)) or "clrepro"
TINY = ["benchmark=pdigits", "benchmark.num_tasks=2", "backbone.hidden=[16]", "trainer.epochs=1",
        "trainer.batch_size=64", "metrics=[AA,BWT]", "trainer.threads=1"]
ACC_HEADER = "after_training_task,average_accuracy,test_on_task_1,test_on_task_2"
ACC2 = f"{ACC_HEADER}\n1,0.9,0.9,\n2,0.8,0.7,0.9\n"
ACC3 = ("after_training_task,average_accuracy,test_on_task_1,test_on_task_2,test_on_task_3\n"
        "1,0.9,0.9,,\n2,0.8,0.8,0.8,\n3,0.8,0.8,0.8,0.8\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- the inputs -----------------------------------------------------------------------------------------
# Files a case may name, created in its working folder: {name: text | bytes | None (a folder)}.
FILES = {
    "bad.yaml": "trainer: {epochs: [1, 2\n",
    "binary.yaml": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe",
    "latin1.yaml": "seed: 3  # caf\xe9\n".encode("latin-1"),
    "scalar.yaml": "42\n",
    "list.yaml": "- seed: 3\n- trainer: {epochs: 1}\n",
    "empty.yaml": "",
    "dupkey.yaml": "seed: 3\nseed: 4\n",
    "folder.yaml": None,
    "hat_pmnist.yaml": "seed: -5\n",  # named like a shipped experiment: the user's file must be the one read
    "note.txt": "not a database\n",
    "acc2.csv": ACC2,
    "acc3.csv": ACC3,
    "nan.csv": f"{ACC_HEADER}\n1,0.9,nan,\n2,0.8,0.7,0.9\n",
    "missing.csv": f"{ACC_HEADER}\n1,0.9,0.9,\n2,0.8,,0.9\n",
    "ragged.csv": f"{ACC_HEADER}\n1,0.9,0.9,,0.5\n2,0.8,0.7,0.9\n",  # a row longer than the header
    "short.csv": f"{ACC_HEADER}\n1,0.9,0.9\n2,0.8,0.7\n",  # row 2 stops before a task it must have
    "dupcol.csv": "after_training_task,average_accuracy,test_on_task_1,test_on_task_1\n1,0.9,0.9,0.9\n",
    "header.csv": f"{ACC_HEADER}\n",
    "hugecol.csv": "after_training_task,average_accuracy,test_on_task_1,test_on_task_1000000000\n1,0.9,0.9,\n",
    "hugerow.csv": "after_training_task,average_accuracy,test_on_task_1\n100000000000,0.9,0.9\n",
    "percent.csv": f"{ACC_HEADER}\n1,90,90,\n2,80,70,90\n",
    "future.csv": f"{ACC_HEADER}\n1,0.9,0.9,0.1\n2,0.8,0.7,0.9\n",
    "extra.csv": "after_training_task,average_accuracy,test_on_task_1,notes\n1,0.9,0.9,hi\n",
    "gap.csv": "after_training_task,average_accuracy,test_on_task_1,test_on_task_3\n1,0.9,0.9,\n",
    "inf.csv": f"{ACC_HEADER}\n1,0.9,inf,\n2,0.8,0.7,0.9\n",
    "joint2rows.csv": "average_accuracy,test_on_task_1,test_on_task_2\n0.9,0.9,0.9\n0.8,0.8,0.8\n",
    "jointgap.csv": "average_accuracy,test_on_task_1,test_on_task_2\n0.9,0.9,\n",
    "pub_binary.csv": b"\x00\x01approach,benchmark",
    "pub_nan.csv": "approach,benchmark,metric,mean,std,n\nHAT,pmnist,AA,nan,1.0,5\n",
    "pub_dup.csv": "approach,benchmark,metric,mean\nHAT,pmnist,AA,90\nHAT,pmnist,AA,91\n",
    "plugin.py": b"\x00\x00binary plugin",
    "pyobj.yaml": "seed: !!python/object/apply:os.system ['echo hi']\n",
    "tabs.yaml": "trainer:\n\tepochs: 3\n",
    "badrun/metrics.json": "{not json",
    # aliases that expand a 400-byte file to 10**5 values (a billion-laughs file, five levels of x10)
    "bomb.yaml": "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{b}: &{b} [{', '.join(['*' + a] * 10)}]\n" for a, b in zip("abcd", "bcde")) + "seed: 3\n",
    "task0.csv": "after_training_task,average_accuracy,test_on_task_0,test_on_task_1\n1,0.9,0.9,0.9\n",
    "task01.csv": "after_training_task,average_accuracy,test_on_task_1,test_on_task_01\n1,0.9,0.9,0.1\n",
    "digit.csv": "after_training_task,average_accuracy,test_on_task_\u0661\n1,0.9,0.9\n",
    "negavg.csv": f"{ACC_HEADER}\n1,-5,0.9,\n2,0.8,0.7,0.9\n",
    "quote.csv": f"{ACC_HEADER}\n1,0.9,\"0.9,\n",
    "nolast.csv": f"{ACC_HEADER}\n1,0.9,0.9,\n",
    "pyexit.py": "import sys\nsys.exit(0)\n",
    "baddefault.py": ("from dataclasses import dataclass\nfrom clrepro.config.hparams import hp\n"
                      "@dataclass\nclass Config:\n    reg_strength: float = hp('abc')\n"
                      "def estimate_importance(model, batches, cfg):\n    return {}\n"
                      "def compute_regularization_loss(model, state, cfg):\n    return 0.0\n"),
    "infrun/metrics.json": '{"AA": Infinity}',
    "bigrun/metrics.json": '{"AA": 1' + "0" * 400 + "}",
    "deeprun/metrics.json": "[" * 100_000 + "]" * 100_000,
}
LINKS = {"dangling": "nowhere", "loop": "loop"}  # symbolic links made in the working folder: {name: target}


def sweep(**changes) -> dict:
    spec = {"name": "h", "experiment": {"name": "hat_pmnist", "overrides": TINY},
            "search_space": {"optimizer.lr": {"type": "float", "low": 0.001, "high": 0.01, "log": True}},
            "metrics": ["AA", "BWT"], "seeds": {"tune": [1], "report": [7]}, "num_samples": 2,
            "storage": {"tracking_uri": "sqlite:///mlflow.db", "tune_path": "ray_results"}}
    spec.update(changes)
    return spec


def table(**changes) -> dict:
    spec = {"title": "t", "columns": [{"benchmark": "pmnist", "metric": "AA"}],
            "rows": [{"label": "HAT", "runs": {"pmnist": {"folders": "runs/*"}}}]}
    spec.update(changes)
    return spec


DEAD = f"http://127.0.0.1:{free_port()}"  # nothing listens there
SPECS = {  # YAML files written per case: {name: mapping}
    "s_tune_empty.yaml": sweep(seeds={"tune": [], "report": [7]}),
    "s_tune_dup.yaml": sweep(seeds={"tune": [1, 1], "report": [7]}),
    "s_seed_big.yaml": sweep(seeds={"tune": [2**32], "report": [7]}),
    "s_late_choice.yaml": sweep(search_space={"algorithm.s_max": {"type": "categorical", "choices": [100.0, 0.5]}}),
    "s_high.yaml": sweep(search_space={"scheduler.factor": {"type": "float", "low": 0.1, "high": 1.5}}),
    "s_int_float.yaml": sweep(search_space={"trainer.epochs": {"type": "int", "low": 1.5, "high": 3}}),
    "s_list_choice.yaml": sweep(search_space={"backbone.hidden": {"type": "categorical", "choices": [[64, 32]]}}),
    "s_dup_choice.yaml": sweep(search_space={"algorithm.s_max": {"type": "categorical", "choices": [100.0, 100.0]}}),
    "s_step.yaml": sweep(search_space={"optimizer.lr": {"type": "float", "low": 0.001, "high": 0.01,
                                                        "step": 0.004}}),
    "s_variants.yaml": sweep(variants={"a": 3}),
    "s_gpu.yaml": sweep(resources={"cpu": 1, "gpu": 1.5}),
    "s_uri.yaml": sweep(storage={"tracking_uri": "foo://bar", "tune_path": "ray_results"}),
    "s_cpu.yaml": sweep(resources={"cpu": 64}),
    "s_gpu1.yaml": sweep(resources={"cpu": 1, "gpu": 1}),
    "s_uri_dir.yaml": sweep(storage={"tracking_uri": "sqlite:///no/such/dir/m.db", "tune_path": "ray_results"}),
    "s_uri_text.yaml": sweep(storage={"tracking_uri": "sqlite:///note.txt", "tune_path": "ray_results"}),
    "s_tune_file.yaml": sweep(storage={"tracking_uri": "sqlite:///mlflow.db", "tune_path": "note.txt"}),
    "s_name.yaml": sweep(name="a/../b"),
    "s_seed_key.yaml": sweep(search_space={"seed": {"type": "int", "low": 1, "high": 5}}),
    "s_override.yaml": sweep(experiment={"name": "hat_pmnist", "overrides": [*TINY, "trainer.epochz=3"]}),
    "s_failures.yaml": sweep(max_failures=-1),
    "s_metric_nan.yaml": sweep(search_space={"optimizer.lr": {"type": "float", "low": float("nan"), "high": 1}}),
    "ok_sweep.yaml": sweep(),
    "t_metric.yaml": table(columns=[{"benchmark": "pmnist", "metric": "XX"}]),
    "t_pub_binary.yaml": table(published="pub_binary.csv"),
    "t_pub_nan.yaml": table(published="pub_nan.csv"),
    "t_pub_dup.yaml": table(published="pub_dup.csv"),
    "t_two_kinds.yaml": table(rows=[{"label": "HAT", "runs": {"pmnist": {"folders": "r/*", "sweep": "x"}}}]),
    "t_sweep_file.yaml": table(rows=[{"label": "HAT", "runs": {"pmnist": {"sweep": "x", "sweep_file": "nope.yaml"}}}]),
    "t_decimals.yaml": table(decimals=1e9),
    "t_no_columns.yaml": table(columns=[]),
    "t_bad_folder.yaml": table(rows=[{"label": "HAT", "runs": {"pmnist": {"folders": "badrun"}}}]),
    "s_experiment.yaml": sweep(experiment={"name": "nope"}),
    "ok_table.yaml": table(),
    "t_pub_n.yaml": table(published_n={"pmnist": 1}),
    "t_two_sweeps.yaml": table(rows=[  # the second sweep is broken: refused before the first one runs
        {"label": "HAT", "runs": {"pmnist": {"sweep": "h", "sweep_file": "ok_sweep.yaml"}}},
        {"label": "HAT2", "runs": {"pmnist": {"sweep": "h2", "sweep_file": "s_override2.yaml"}}}]),
    "s_override2.yaml": sweep(name="h2", experiment={"name": "hat_pmnist", "overrides": [*TINY, "trainer.epochz=3"]}),
    "t_inf.yaml": table(rows=[{"label": "HAT", "runs": {"pmnist": {"folders": "infrun"}}}]),
    "t_bigint.yaml": table(rows=[{"label": "HAT", "runs": {"pmnist": {"folders": "bigrun"}}}]),
    "t_deep.yaml": table(rows=[{"label": "HAT", "runs": {"pmnist": {"folders": "deeprun"}}}]),
}

# (id, argv, expected text in the message); {free} is replaced by a free port, {dead} by a dead server URI
CASES = [
    # run: files that cannot be read, named as the user's file
    ("run-yaml", ["run", "bad.yaml"], "bad.yaml: not valid YAML (line 2"),
    ("run-binary", ["run", "binary.yaml"], "binary.yaml: experiment file is a binary file"),
    ("run-latin1", ["run", "latin1.yaml"], "latin1.yaml: experiment file is not UTF-8 text"),
    ("run-scalar", ["run", "scalar.yaml"], "scalar.yaml: an experiment file must be a mapping"),
    ("run-list", ["run", "list.yaml"], "list.yaml: an experiment file must be a mapping"),
    ("run-empty", ["run", "empty.yaml"], "empty.yaml: experiment file is empty"),
    ("run-dupkey", ["run", "dupkey.yaml"], "key 'seed' is written twice"),
    ("run-folder", ["run", "folder.yaml"], "folder.yaml: experiment file is a folder"),
    ("run-missing", ["run", "nope/none.yaml"], "nope/none.yaml: experiment file not found"),
    ("run-pyobject", ["run", "pyobj.yaml"], "could not determine a constructor"),
    ("run-tabs", ["run", "tabs.yaml"], "tabs.yaml: not valid YAML (line 2, column 1"),
    ("run-devnull", ["run", "/dev/null"], "/dev/null: experiment file is not a regular file"),
    ("run-shadow", ["run", "hat_pmnist.yaml"], "hat_pmnist.yaml: seed: -5 is out of range"),
    # run: values the libraries would reject
    ("run-lr-nan", ["run", "hat_pmnist", *TINY, "optimizer.lr=nan"], "optimizer.lr: NaN is not allowed"),
    ("run-lr-inf", ["run", "hat_pmnist", *TINY, "optimizer.lr=inf"], "optimizer.lr: inf is not allowed"),
    ("run-lr-huge", ["run", "hat_pmnist", *TINY, "optimizer.lr=1e400"], "optimizer.lr: inf is not allowed"),
    ("run-lr-neg", ["run", "hat_pmnist", *TINY, "optimizer.lr=-0.1"], "optimizer.lr: -0.1 is out of range"),
    ("run-beta-1", ["run", "hat_pmnist", *TINY, "optimizer.betas=[0.9,1.0]"], "optimizer.betas: 1.0 is out of range"),
    ("run-beta-len", ["run", "hat_pmnist", *TINY, "optimizer.betas=[0.9]"], "needs exactly 2"),
    ("run-beta-3", ["run", "hat_pmnist", *TINY, "optimizer.betas=[0.9,0.9,0.9]"], "needs exactly 2"),
    ("run-beta-neg", ["run", "hat_pmnist", *TINY, "optimizer.betas=[-0.1,0.9]"], "-0.1 is out of range"),
    ("run-eps", ["run", "hat_pmnist", *TINY, "optimizer.eps=-1e-8"], "optimizer.eps"),
    ("run-momentum", ["run", "hat_pmnist", *TINY, "optimizer.momentum=2"], "optimizer.momentum: 2.0 is out of range"),
    ("run-factor-1", ["run", "hat_pmnist", *TINY, "scheduler.factor=1.0"], "scheduler.factor: 1.0 is out of range"),
    ("run-factor-0", ["run", "hat_pmnist", *TINY, "scheduler.factor=0"], "scheduler.factor: 0.0 is out of range"),
    ("run-devices-abc", ["run", "hat_pmnist", *TINY, "trainer.devices=abc"], "trainer.devices: 'abc' is not one"),
    ("run-devices-two", ["run", "hat_pmnist", *TINY, "trainer.devices=[0,1]"], "trainer.devices"),
    ("run-devices-0", ["run", "hat_pmnist", *TINY, "trainer.devices=0"], "trainer.devices: 0 is not one device"),
    ("run-hidden-neg", ["run", "finetuning_pmnist", *TINY, "backbone.hidden=[-5]"], "backbone.hidden: -5 is out"),
    ("run-hidden-0", ["run", "finetuning_pmnist", *TINY, "backbone.hidden=[64,0]"], "backbone.hidden: 0 is out"),
    ("run-seed-big", ["run", "hat_pmnist", *TINY, "seed=4294967296"], "seed: 4294967296 is out of range"),
    ("run-seed-huge", ["run", "hat_pmnist", *TINY, "seed=99999999999999999999999"], "seed:"),
    ("run-epochs-1e30", ["run", "hat_pmnist", *TINY, "trainer.epochs=1e30"], "trainer.epochs"),
    ("run-epochs-0", ["run", "hat_pmnist", *TINY, "trainer.epochs=0"], "trainer.epochs: 0 is out of range"),
    ("run-batch-abc", ["run", "hat_pmnist", *TINY, "trainer.batch_size=abc"], "expected an integer"),
    ("run-iterations", ["run", "hat_pmnist", *TINY, "trainer.iterations=-3"], "trainer.iterations"),
    ("run-threads", ["run", "hat_pmnist", *TINY, "trainer.threads=100000"], "trainer.threads"),
    ("run-smax-inf", ["run", "hat_pmnist", *TINY, "algorithm.s_max=inf"], "algorithm.s_max: inf is not allowed"),
    ("run-smax-huge", ["run", "hat_pmnist", *TINY, "algorithm.s_max=1e308"],
     "algorithm.s_max: 1e+308 is out of range (allowed: [1.0, 1000000.0])"),
    ("run-accel", ["run", "hat_pmnist", *TINY, "trainer.accelerator=tpu"], "trainer.accelerator: 'tpu'"),
    ("run-precision", ["run", "hat_pmnist", *TINY, "trainer.precision=8-bit"], "trainer.precision"),
    # run: checks that used to come only after training
    ("run-ref-missing", ["run", "hat_pmnist", *TINY, "references.joint=no/acc.csv"], "references.joint: no/acc.csv"),
    ("run-ref-tasks", ["run", "hat_pmnist", *TINY, "references.independent=acc3.csv"], "has 3 tasks, the benchmark"),
    ("run-ref-binary", ["run", "hat_pmnist", *TINY, "references.random=binary.yaml"], "references.random"),
    ("run-ref-joint-rows", ["run", "hat_pmnist", *TINY, "references.joint=acc2.csv"], "exactly one data row"),
    ("run-out-file", ["run", "hat_pmnist", *TINY, "--out", "note.txt"], "--out note.txt: is an existing file"),
    ("run-out-in-file", ["run", "hat_pmnist", *TINY, "--out", "note.txt/run"], "note.txt is a file"),
    ("run-out-long", ["run", "hat_pmnist", *TINY, "--out", "o/" + "x" * 300], "too long for the file system"),
    ("run-out-empty", ["run", "hat_pmnist", *TINY, "--out", ""], "--out '': not a valid path"),
    ("run-age", ["run", "hat_pmnist", *TINY, "unlearning.unlearnable_age=abc"], "hat_pmnist.yaml: unlearning."),
    ("run-name-long", ["run", "hat_pmnist", *TINY, "name=" + "x" * 300], "name: must be 1 to 200 characters"),
    ("run-name-up", ["run", "hat_pmnist", *TINY, "name=../../x"], "name: '../../x' is not a safe folder name"),
    ("run-name-abs", ["run", "hat_pmnist", *TINY, "name=/etc/x"], "is not a safe folder name"),
    # run: nonsense accepted silently before
    ("run-metrics-dup", ["run", "hat_pmnist", *TINY, "metrics=[AA,AA]"], "metrics: repeats 'AA'"),
    ("run-metrics-empty", ["run", "hat_pmnist", *TINY, "metrics=[]"], "metrics: is empty"),
    ("run-class-dup", ["run", "finetuning_pmnist", *TINY, "benchmark=split_digits",
                       "+benchmark.class_order=[0,0,1,1,2,2,3,3,4,4]"], "benchmark.class_order: repeats 0"),
    ("run-class-range", ["run", "finetuning_pmnist", *TINY, "benchmark=split_digits",
                         "+benchmark.class_order=[0,1,2,3,4,5,6,7,8,99]"], "class 99 does not exist"),
    ("run-tasks-huge", ["run", "hat_pmnist", *TINY, "benchmark.num_tasks=1000000000"], "benchmark.num_tasks"),
    ("run-request-huge", ["run", "hat_pmnist", *TINY, "unlearning.requests={1000000000: [1]}"], "unlearning"),
    ("run-override-syntax", ["run", "hat_pmnist", *TINY, "seed=["], "overrides: cannot parse 'seed=['"),
    ("run-override-unknown", ["run", "hat_pmnist", *TINY, "foo=1"], "foo"),
    ("run-plugin-binary", ["run", "--plugin", "plugin.py", "hat_pmnist", *TINY], "plugin.py: plugin failed to import"),
    ("run-config-dir", ["run", "hat_pmnist"], "not a clrepro config folder"),  # with CLREPRO_CONFIG_DIR=/nonexistent
    # run: what float32 tensors, memory and the file system cannot hold, refused before training
    ("run-lr-f32", ["run", "hat_pmnist", *TINY, "optimizer.lr=1e39"], "optimizer.lr: 1e+39 is too large for a float32"),
    ("run-wd-f32", ["run", "hat_pmnist", *TINY, "optimizer.weight_decay=1e300"], "too large for a float32 tensor"),
    ("run-ewc-f32", ["run", "finetuning_pmnist", *TINY, "algorithm=ewc",
                     "algorithm.parameter_change_reg_factor=1e308"], "algorithm.parameter_change_reg_factor: 1e+308"),
    ("run-temp-tiny", ["run", "lwf_pmnist", *TINY, "algorithm.distillation_reg_temperature=1e-300"],
     "1e-300 is too small for a float32 tensor"),
    ("run-eps-0", ["run", "hat_pmnist", *TINY, "optimizer.eps=0"], "optimizer.eps: 0.0 is out of range (allowed: (0.0"),
    ("run-hidden-memory", ["run", "finetuning_pmnist", *TINY, "backbone.hidden=[1048576,1048576]"],
     "backbone: 'mlp' has 1,099,"),
    ("run-buffer-memory", ["run", "der_pmnist", *TINY, "algorithm.buffer_size=100000000000"],
     "algorithm.buffer_size: needs at least"),
    ("run-bomb", ["run", "bomb.yaml", *TINY], "bomb.yaml: its YAML aliases expand to more than 10,000 values"),
    ("run-name-too-long", ["run", "x" * 300 + ".yaml"], "cannot read experiment file (File name too long)"),
    ("run-out-dangling", ["run", "hat_pmnist", *TINY, "--out", "dangling"], "--out dangling: is a symbolic link to "
     "nothing"),
    ("run-out-loop", ["run", "hat_pmnist", *TINY, "--out", "loop/x"], "--out loop/x: cannot"),
    ("run-out-deep", ["run", "hat_pmnist", *TINY, "--out", "d/" * 1100], "1100 folders deep (at most 128)"),
    # run: cross-field checks that used to come after task 1
    ("run-fl-epochs", ["run", "flashback/pmnist_embedded", *TINY], "trainer.epochs: Flashback splits each task's"),
    ("run-fl-iterations", ["run", "flashback/pmnist_embedded", *TINY, "trainer.epochs=2", "trainer.iterations=1"],
     "trainer.iterations: Flashback splits"),
    ("run-fl-host", ["run", "flashback/pmnist_embedded", *TINY, "trainer.epochs=2", "algorithm.host=online_ewc"],
     "algorithm.host: expected a mapping, got 'online_ewc'"),
    ("run-fl-primary", ["run", "flashback/pmnist_embedded", *TINY, "algorithm.epochs_primary=1000000000000000000"],
     "algorithm.epochs_primary: 1000000000000000000 is out of range (allowed: [1, 100000])"),
    ("run-age-huge", ["run", "unlearning/baseline_pmnist5", *TINY, "unlearning.unlearnable_age=1" + "0" * 400,
                      "unlearning.requests={2: [1]}"], "unlearning.unlearnable_age: 1000"),
    ("run-request-id-huge", ["run", "unlearning/baseline_pmnist5", *TINY, "unlearning.requests={2: [1" + "0" * 400 +
                             "]}"], "does not fit in a 64-bit integer"),
    ("run-plugin-exit", ["run", "--plugin", "pyexit.py", "hat_pmnist", *TINY], "pyexit.py: plugin called sys.exit(0)"),
    ("run-plugin-default", ["run", "--plugin", "baddefault.py", "finetuning_pmnist", *TINY,
                            "algorithm.name=baddefault"], "the default of Config.reg_strength: expected a number"),
    # the environment
    ("env-debug", ["list", "algorithms"], "CLREPRO_DEBUG='maybe': not a boolean"),
    ("env-data-user", ["run", "hat_pmnist", *TINY], "CLREPRO_DATA=~nouser_zz/d: cannot expand '~nouser_zz'"),
    ("env-data-long", ["run", "hat_pmnist", *TINY], "path too long for the file system"),
    ("env-plot-scale", ["run", "hat_pmnist", *TINY], "CLREPRO_PLOT_SCALE='log': not a plot scale (allowed: data"),
    ("env-config-file", ["list", "experiments"], "CLREPRO_CONFIG_DIR=note.txt: is a file, not a folder"),
    # sweep
    ("sweep-yaml", ["sweep", "bad.yaml"], "bad.yaml: not valid YAML"),
    ("sweep-binary", ["sweep", "binary.yaml"], "binary.yaml: sweep file is a binary file"),
    ("sweep-list", ["sweep", "list.yaml"], "list.yaml: sweep file must be a mapping"),
    ("sweep-tune-empty", ["sweep", "s_tune_empty.yaml"], "seeds.tune: is empty"),
    ("sweep-tune-dup", ["sweep", "s_tune_dup.yaml"], "seeds.tune: repeats 1"),
    ("sweep-seed-big", ["sweep", "s_seed_big.yaml"], "seeds.tune: 4294967296 is out of range"),
    ("sweep-late-choice", ["sweep", "s_late_choice.yaml"], "search_space.algorithm.s_max: choice 0.5"),
    ("sweep-high", ["sweep", "s_high.yaml"], "search_space.scheduler.factor: 1.5 is out of range"),
    ("sweep-int-float", ["sweep", "s_int_float.yaml"], "search_space.trainer.epochs.low: 1.5 is not an integer"),
    ("sweep-list-choice", ["sweep", "s_list_choice.yaml"], "is not a scalar"),
    ("sweep-dup-choice", ["sweep", "s_dup_choice.yaml"], "repeats a choice"),
    ("sweep-step", ["sweep", "s_step.yaml"], "does not divide"),
    ("sweep-variants", ["sweep", "s_variants.yaml"], "variants.a: expected a mapping"),
    ("sweep-gpu", ["sweep", "s_gpu.yaml"], "resources.gpu: 1.5 is neither"),
    ("sweep-cpu", ["sweep", "s_cpu.yaml", "--num-cpus", "2"], "resources.cpu: 64 per trial, but the local Ray "
     "instance has CPU 2, GPU 0: no trial could start"),
    ("sweep-gpu-none", ["sweep", "s_gpu1.yaml", "--num-cpus", "2"], "resources.gpu: 1 per trial, but the local Ray"),
    ("sweep-uri", ["sweep", "s_uri.yaml"], "storage.tracking_uri: 'foo://bar': unsupported scheme"),
    ("sweep-uri-dir", ["sweep", "s_uri_dir.yaml"], "does not exist"),
    ("sweep-uri-text", ["sweep", "s_uri_text.yaml"], "is not a SQLite database"),
    ("sweep-uri-dead", ["sweep", "ok_sweep.yaml", "--tracking-uri", "{dead}"], "no tracking server answers"),
    ("sweep-tune-file", ["sweep", "s_tune_file.yaml"], "storage.tune_path note.txt: is an existing file"),
    ("sweep-name", ["sweep", "s_name.yaml"], "name: 'a/../b' contains '/'"),
    ("sweep-seed-key", ["sweep", "s_seed_key.yaml"], "search_space.seed: cannot be searched"),
    ("sweep-override", ["sweep", "s_override.yaml"], "trainer.epochz"),
    ("sweep-failures", ["sweep", "s_failures.yaml"], "max_failures: -1 is out of range"),
    ("sweep-nan-bound", ["sweep", "s_metric_nan.yaml"], "NaN is not allowed"),
    ("sweep-num-cpus", ["sweep", "ok_sweep.yaml", "--num-cpus", "0"], "--num-cpus: 0 is not a positive integer"),
    ("sweep-address", ["sweep", "ok_sweep.yaml", "--address", "bogus"], "--address bogus: expected auto"),
    ("sweep-address-dead", ["sweep", "ok_sweep.yaml", "--address", "127.0.0.1:{free}"], "no Ray cluster answers"),
    ("sweep-resume", ["sweep", "ok_sweep.yaml", "--resume"], "--resume: no interrupted sweep"),
    ("sweep-variant", ["sweep", "ok_sweep.yaml", "--variant", "x"], "variant: no variant 'x'"),
    ("sweep-experiment", ["sweep", "s_experiment.yaml"], "experiment.name: unknown experiment 'nope'"),
    # table
    ("table-yaml", ["table", "bad.yaml"], "bad.yaml: not valid YAML"),
    ("table-binary", ["table", "binary.yaml"], "binary.yaml: table spec is a binary file"),
    ("table-metric", ["table", "t_metric.yaml"], "columns[0].metric: 'XX' is not allowed"),
    ("table-pub-binary", ["table", "t_pub_binary.yaml"], "pub_binary.csv: published CSV is a binary file"),
    ("table-pub-nan", ["table", "t_pub_nan.yaml"], "pub_nan.csv: line 2: mean and std must be finite"),
    ("table-pub-dup", ["table", "t_pub_dup.yaml"], "is listed twice"),
    ("table-two-kinds", ["table", "t_two_kinds.yaml"], "needs exactly one of sweep, experiment, folders"),
    ("table-sweep-file", ["table", "t_sweep_file.yaml"], "sweep_file: file"),
    ("table-decimals", ["table", "t_decimals.yaml"], "decimals"),
    ("table-uri", ["table", "ok_table.yaml", "--tracking-uri", "foo://bar"], "--tracking-uri: 'foo://bar'"),
    ("table-out-file", ["table", "ok_table.yaml", "--out", "note.txt"], "--out note.txt: is an existing file"),
    ("table-no-columns", ["table", "t_no_columns.yaml"], "columns: is empty"),
    ("table-bad-folder", ["table", "t_bad_folder.yaml"], "badrun/metrics.json: not valid JSON"),
    ("table-run-sweeps", ["table", "t_two_sweeps.yaml", "--run"], "trainer.epochz"),
    ("table-uri-empty", ["table", "ok_table.yaml", "--tracking-uri", ""], "tracking"),
    ("table-published-n", ["table", "t_pub_n.yaml"], "published_n.pmnist: 1 is out of range"),
    ("table-infinity", ["table", "t_inf.yaml"], "infrun/metrics.json: Infinity is not a finite number"),
    ("table-bigint", ["table", "t_bigint.yaml"], "does not fit in 64 bits"),
    ("table-deep-json", ["table", "t_deep.yaml"], "deeprun/metrics.json: not valid JSON (nested too deeply)"),
    ("table-out-dangling", ["table", "ok_table.yaml", "--out", "dangling"], "--out dangling: is a symbolic link"),
    # metrics
    ("metrics-nan", ["metrics", "nan.csv"], "nan.csv: value 'nan' in column test_on_task_1, line 2"),
    ("metrics-inf", ["metrics", "inf.csv"], "is not a finite number"),
    ("metrics-missing", ["metrics", "missing.csv"], "line 3 (after_training_task 2) has no value"),
    ("metrics-ragged", ["metrics", "ragged.csv"], "line 2 has 5 fields, the header has 4"),
    ("metrics-short-row", ["metrics", "short.csv"], "line 3 (after_training_task 2) has no value for test_on_task_2"),
    ("metrics-dupcol", ["metrics", "dupcol.csv"], "column test_on_task_1 appears twice"),
    ("metrics-header", ["metrics", "header.csv"], "has a header but no data rows"),
    ("metrics-hugecol", ["metrics", "hugecol.csv"], "at most 1000 tasks"),
    ("metrics-hugerow", ["metrics", "hugerow.csv"], "must be a task number in 1..1"),
    ("metrics-percent", ["metrics", "percent.csv"], "outside [0, 1]"),
    ("metrics-future", ["metrics", "future.csv"], "a task not trained yet"),
    ("metrics-extra", ["metrics", "extra.csv"], "unexpected column 'notes'"),
    ("metrics-gap", ["metrics", "gap.csv"], "missing column test_on_task_2"),
    ("metrics-binary", ["metrics", "binary.yaml"], "binary.yaml: accuracy file is a binary file"),
    ("metrics-folder", ["metrics", "folder.yaml"], "folder.yaml: accuracy file is a folder"),
    ("metrics-joint-rows", ["metrics", "acc2.csv", "--joint", "joint2rows.csv"], "exactly one data row, found 2"),
    ("metrics-joint-gap", ["metrics", "acc2.csv", "--joint", "jointgap.csv"], "the joint row has no value"),
    ("metrics-shape", ["metrics", "acc2.csv", "--independent", "acc3.csv"], "acc3.csv: --independent has 3 tasks"),
    ("metrics-variant", ["metrics", "acc2.csv", "--fr-variant", "bogus"], "invalid choice: 'bogus'"),
    ("metrics-task0", ["metrics", "task0.csv"], "unexpected column 'test_on_task_0'"),
    ("metrics-task01", ["metrics", "task01.csv"], "unexpected column 'test_on_task_01'"),
    ("metrics-digit", ["metrics", "digit.csv"], "unexpected column 'test_on_task_\u0661'"),
    ("metrics-negative-avg", ["metrics", "negavg.csv"], "column average_accuracy, line 2 has a value outside [0, 1]"),
    ("metrics-quote", ["metrics", "quote.csv"], "quote.csv: not a readable CSV (unexpected end of data)"),
    ("metrics-no-last-row", ["metrics", "nolast.csv"], "no row for after_training_task 2, the last task"),
    ("metrics-joint-empty", ["metrics", "acc2.csv", "--joint", ""], "--joint '': not a path"),
    # list
    ("list-section", ["list", "nope"], "invalid choice: 'nope'"),
    ("list-extra", ["list", "algorithms", "extra"], "unrecognized arguments: extra"),
    ("list-flag", ["list", "--bogus"], "unrecognized arguments: --bogus"),
    ("list-config-dir", ["list", "experiments"], "not a clrepro config folder"),  # CLREPRO_CONFIG_DIR=/nonexistent
    # ui
    ("ui-port-0", ["ui", "--port", "0"], "0 is not a port number"),
    ("ui-port-big", ["ui", "--port", "99999"], "99999 is not a port number"),
    ("ui-port-abc", ["ui", "--port", "abc"], "'abc' is not a port number"),
    ("ui-uri", ["ui", "--tracking-uri", "foo://bar"], "unsupported scheme 'foo'"),
    ("ui-uri-missing", ["ui", "--tracking-uri", "sqlite:///none.db"], "does not exist"),
    ("ui-uri-text", ["ui", "--tracking-uri", "sqlite:///note.txt"], "is not a SQLite database"),
    ("ui-uri-folder", ["ui", "--tracking-uri", "sqlite:///folder.yaml"], "is a folder, not a SQLite file"),
    ("ui-server", ["ui", "--tracking-uri", "{dead}"], "no tracking server answers"),
    ("ui-host", ["ui", "--tracking-uri", "sqlite:///m.db", "--host", "not a host!"], "cannot listen there"),
    ("ui-port-busy", ["ui", "--tracking-uri", "sqlite:///m.db", "--port", "{busy}"], "cannot listen there"),
]
NO_CONFIG_DIR = {"run-config-dir", "list-config-dir"}
ENV = {"env-debug": {"CLREPRO_DEBUG": "maybe"}, "env-data-user": {"CLREPRO_DATA": "~nouser_zz/d"},
       "env-data-long": {"CLREPRO_DATA": "x" * 300}, "env-plot-scale": {"CLREPRO_PLOT_SCALE": "log"},
       "env-config-file": {"CLREPRO_CONFIG_DIR": "note.txt"}}
# The representative subset that also runs as real subprocesses (one per class and command).
SUBPROCESS = ["run-bomb", "run-plugin-exit", "env-data-user", "run-hidden-memory", "run-yaml", "run-shadow", "run-lr-inf", "run-devices-abc", "run-ref-tasks", "run-name-up",
              "run-class-dup", "run-out-file", "sweep-late-choice", "sweep-uri", "table-pub-binary", "metrics-missing",
              "list-section", "ui-uri"]


@pytest.fixture
def workdir(tmp_path):
    """A fresh working folder with every input file; returns (folder, snapshot of what is in it)."""
    for name, content in FILES.items():
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            p.mkdir()
        elif isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content)
    for name, spec in SPECS.items():
        (tmp_path / name).write_text(yaml.safe_dump(spec))
    for name, target in LINKS.items():
        (tmp_path / name).symlink_to(target)
    sqlite3 = __import__("sqlite3")
    sqlite3.connect(tmp_path / "m.db").execute("create table t (x)").connection.close()  # a valid SQLite file
    run = tmp_path / "old_run"  # an existing run folder: must never be overwritten
    run.mkdir()
    (run / "manifest.json").write_text('{"status": "FINISHED"}\n')
    return tmp_path


def snapshot(folder: Path) -> dict[str, tuple]:
    out = {}
    for p in sorted(folder.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(folder))] = (p.is_dir(), st.st_size, st.st_mtime_ns)
    return out


def temp_entries() -> set[str]:
    return {n for n in os.listdir(tempfile.gettempdir()) if n.startswith("clrepro")}


def _argv(argv: list[str], busy: int) -> list[str]:
    return [a.replace("{free}", str(free_port())).replace("{dead}", DEAD).replace("{busy}", str(busy)) for a in argv]


def check(rc: int, out: str, err: str, expected: str) -> None:
    text = (out + err).strip()
    lines = text.splitlines()
    assert rc == 2, f"exit {rc}: {text[-2000:]}"
    assert "Traceback" not in text, text[-2000:]
    assert 1 <= len(lines) <= 4, text[-2000:]
    assert expected in text, text


@pytest.fixture
def busy_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    yield s.getsockname()[1]
    s.close()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_hostile_input_in_process(case, workdir, busy_port, monkeypatch, capsys):
    name, argv, expected = case
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("CLREPRO_CONFIG_DIR", "/nonexistent" if name in NO_CONFIG_DIR else str(ROOT / "configs"))
    for var, value in ENV.get(name, {}).items():
        monkeypatch.setenv(var, value)
    for var in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AIR_NEW_OUTPUT", "TUNE_DISABLE_STRICT_METRIC_CHECKING",
                "TUNE_PRINT_ALL_TRIAL_ERRORS", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)  # restored after the case
    before, temp = snapshot(workdir), temp_entries()
    try:
        rc = main(_argv(argv, busy_port))
    except SystemExit as e:  # argparse
        rc = e.code
    captured = capsys.readouterr()
    check(rc, captured.out, captured.err, expected)
    assert snapshot(workdir) == before, "the working folder changed"
    assert temp_entries() <= temp, "a temporary file was left behind"


@pytest.mark.parametrize("name", SUBPROCESS)
def test_hostile_input_as_a_subprocess(name, workdir, busy_port):
    _, argv, expected = next(c for c in CASES if c[0] == name)
    env = {**os.environ, "CLREPRO_CONFIG_DIR": str(ROOT / "configs"), **ENV.get(name, {})}
    env.pop("RAY_ADDRESS", None)
    before = snapshot(workdir)
    p = subprocess.run([CLREPRO, *_argv(argv, busy_port)], cwd=workdir, env=env, capture_output=True, text=True,
                       timeout=120)
    check(p.returncode, p.stdout, p.stderr, expected)
    assert snapshot(workdir) == before


def test_existing_run_folder_is_never_overwritten(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("CLREPRO_CONFIG_DIR", str(ROOT / "configs"))
    before = snapshot(workdir)
    rc = main(["run", "hat_pmnist", *TINY, "--out", "old_run"])
    err = capsys.readouterr().err
    check(rc, "", err, "--out old_run: folder already holds a run (manifest.json)")
    assert (workdir / "old_run" / "manifest.json").read_text() == '{"status": "FINISHED"}\n'
    assert snapshot(workdir) == before


def test_the_module_has_sixty_inputs_across_every_command():
    assert len(CASES) >= 60
    assert {c[1][0] for c in CASES} == {"run", "sweep", "table", "metrics", "list", "ui"}


@pytest.mark.parametrize("tail, expected", [
    ("bomb: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{b}: &{b} [{', '.join(['*' + a] * 10)}]\n" for a, b in zip("abcd", "bcde")),
     "algorithm/hat.yaml: its YAML aliases expand to more than 10,000 values"),
    ("broken: [1, 2\n", "algorithm/hat.yaml: not valid YAML (line"),
])
def test_a_bad_group_file_of_the_config_folder_is_named_with_its_line(tail, expected, tmp_path, monkeypatch,
                                                                      capsys):
    """A group file that Hydra would expand for minutes, or that does not parse, is named itself (not the
    experiment that includes it), before any composition or training."""
    cdir = tmp_path / "configs"
    shutil.copytree(ROOT / "configs", cdir)
    with open(cdir / "algorithm" / "hat.yaml", "a") as f:
        f.write(tail)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLREPRO_CONFIG_DIR", str(cdir))
    rc = main(["run", "hat_pmnist", *TINY])
    check(rc, "", capsys.readouterr().err, expected)


def test_a_fifo_in_the_experiment_folder_does_not_block_listing(tmp_path, monkeypatch, capsys):
    cdir = tmp_path / "configs"
    shutil.copytree(ROOT / "configs", cdir)
    os.mkfifo(cdir / "experiment" / "pipe.yaml")
    monkeypatch.setenv("CLREPRO_CONFIG_DIR", str(cdir))
    assert main(["list", "experiments"]) == 0  # would block reading the FIFO
    out = capsys.readouterr().out
    assert "hat_pmnist" in out and "pipe" not in out
