"""The MLflow view of a sweep: run names, descriptions, source tags, metrics that apply, and `clrepro ui` opening
an experiment on its training runs (checked on the server's REST API, and in a headless browser when one is
installed)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from conftest import TINY

ROOT = Path(__file__).resolve().parents[1]


def test_names_and_numbers():
    from clrepro.tracking.names import params_label, short_number, tune_trial_name

    assert [short_number(v) for v in (200.0, 0.12, 0.0084, 1e-6, 1.5e-7, 5, True, "adahat")] == \
        ["200", "0.12", "8.4e-3", "1e-6", "1.5e-7", "5", "True", "adahat"]
    base = {"algorithm": {"name": "hat"}}
    assert params_label({"algorithm.s_max": 200.0, "algorithm.mask_sparsity_reg_factor": 0.12,
                         "optimizer.lr": 0.0084}, base) == "s_max=200 λ=0.12 lr=8.4e-3"
    assert tune_trial_name(SimpleNamespace(config={"x": 1}, experiment_tag="8_x=1", trial_id="ab")) == "t007"
    assert tune_trial_name(SimpleNamespace(config={"_final": {"rank": 1, "seed": 101}}, experiment_tag="9_",
                                           trial_id="cd")) == "final1-s101"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(base: str, path: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(base + path, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def sweep_store(tmp_path_factory):
    """A sweep's experiment as the driver and a trial write it (one trial, one seed), without Ray."""
    import torch

    from clrepro.config.load import load_experiment, resolved_dict
    from clrepro.sweep.spec import load_sweep
    from clrepro.sweep.trial import TrialContext, log_trial_summary, run_seed, trial_config, trial_run
    from clrepro.tracking.mlflow_store import LEVEL, SWEEP, SWEEP_DIR, MlflowStore
    from clrepro.tracking.names import params_label, sweep_description

    d = tmp_path_factory.mktemp("ui")
    uri = f"sqlite:///{d}/mlflow.db"
    spec_file = d / "sweep.yaml"
    spec_file.write_text(yaml.safe_dump({
        "name": "uicheck", "experiment": {"name": "hat_pmnist", "overrides": TINY},
        "search_space": {"algorithm.s_max": {"type": "categorical", "choices": [200.0, 400.0]},
                         "optimizer.lr": {"type": "float", "low": 0.001, "high": 0.03, "log": True}},
        "metrics": ["AA", "BWT"], "seeds": {"tune": [1], "report": []}, "num_samples": 1,
        "storage": {"tracking_uri": uri, "tune_path": str(d / "tune")}}))
    spec = load_sweep(spec_file)
    base = resolved_dict(load_experiment("hat_pmnist", TINY))
    store = MlflowStore(uri)
    exp_id = store.ensure_experiment("uicheck", description=sweep_description(spec, base))
    parent = store.create_run("uicheck-20260101-000000", {LEVEL: "sweep", SWEEP: "uicheck", SWEEP_DIR: str(d)})
    ctx = TrialContext("uicheck", base, ["AA", "BWT"], "AA", "max", uri, exp_id, parent, [1], 3)
    params = {"algorithm.s_max": 200.0, "optimizer.lr": 0.0084}
    run_id = trial_run(store, ctx, "abc123", "search", params, f"t007 {params_label(params, base)}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rec = run_seed(ctx, store, trial_config(ctx, params), params, 1, run_id, "abc123", "search", label="t007")
    finally:
        torch.set_num_threads(threads)
    log_trial_summary(store, run_id, [rec])
    store.set_status(run_id, "FINISHED")
    store.set_status(parent, "FINISHED")
    return SimpleNamespace(uri=uri, dir=d, experiment_id=exp_id)


@pytest.fixture(scope="module")
def ui_server(sweep_store):
    """`clrepro ui` on a free loopback port, stopped by its PID (and its children's) at the end."""
    port = _free_port()
    log = open(sweep_store.dir / "ui.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "clrepro.cli.main", "ui", "--tracking-uri", sweep_store.uri,
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    try:
        while True:
            try:
                urllib.request.urlopen(base + "/health", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("clrepro ui did not start: " + (sweep_store.dir / "ui.log").read_text()[-2000:])
                time.sleep(0.5)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: the ui command and the server it started
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_sweep_runs_as_the_ui_shows_them(sweep_store, ui_server):
    exp = _api(ui_server, "/api/2.0/mlflow/experiments/get-by-name?experiment_name=uicheck")["experiment"]
    tags = {t["key"]: t["value"] for t in exp.get("tags", [])}
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert tags["mlflow.note.content"].startswith("**clrepro sweep `uicheck`**")
    assert "step N = after training task N" in tags["mlflow.note.content"]
    runs = _api(ui_server, "/api/2.0/mlflow/runs/search", {"experiment_ids": [exp["experiment_id"]]})["runs"]
    by_name = {r["info"]["run_name"]: r for r in runs}
    assert {"t007 s_max=200 lr=8.4e-3", "t007 seed=1", "uicheck-20260101-000000"} <= set(by_name)
    for run in runs:  # the columns User, Source and Version
        rtags = {t["key"]: t["value"] for t in run["data"].get("tags", [])}
        assert rtags["mlflow.user"] and rtags["mlflow.source.name"] and rtags["mlflow.source.type"] == "LOCAL"
        if (ROOT / ".git").exists():
            assert len(rtags["mlflow.source.git.commit"]) == 40
    trial = {m["key"] for m in by_name["t007 s_max=200 lr=8.4e-3"]["data"]["metrics"]}
    seed = {m["key"] for m in by_name["t007 seed=1"]["data"]["metrics"]}
    assert {"AA_mean", "AA_std", "AA_n", "BWT_mean"} <= trial and "AA" in seed and "BWT" in seed
    for cul in ("DD", "AGR", "AA_remaining", "FWT", "FR"):  # not computed in this CL sweep: not logged
        assert not {k for k in trial | seed if k == cul or k.startswith(cul + "_")}
    history = _api(ui_server, f"/api/2.0/mlflow/metrics/get-history?run_id={by_name['t007 seed=1']['info']['run_id']}"
                              "&metric_key=series/AA")["metrics"]
    assert sorted(m["step"] for m in history) == [1, 2, 3]  # steps are tasks


def test_ui_page_defaults_to_model_training(sweep_store, ui_server):
    with urllib.request.urlopen(ui_server + "/", timeout=30) as r:
        html = r.read().decode()
    assert 'localStorage.setItem("mlflow.workflowType_v1",JSON.stringify("machine_learning"))' in html
    assert html.index("mlflow.workflowType_v1") < html.index("static-files/static/js")  # before the UI's bundle
    browser = next((b for b in ("chromium-headless-shell", "chromium", "google-chrome") if shutil.which(b)), None)
    if browser is None:
        pytest.skip("no headless browser installed (apt-get install chromium-headless-shell)")
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=20000",
                          "--window-size=1400,900", "--dump-dom",
                          f"{ui_server}/#/experiments/{sweep_store.experiment_id}"],
                         capture_output=True, text=True, timeout=120).stdout
    assert "uicheck-20260101-000000" in dom and "clrepro sweep" in dom  # the runs table and the description
    assert "Detect Issues" not in dom  # not the GenAI overview
