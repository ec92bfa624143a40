"""Lockstep parity, the parts that run without a peer: clrepro's recording, the float-noise floor, the summary."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
PARITY = ROOT / "benchmarks" / "parity"
sys.path.insert(0, str(PARITY))

import lockstep  # noqa: E402
import lockstep_ledger  # noqa: E402
from pairs import resolve  # noqa: E402
from test_parity_ledger import PAIRS, _compare, _seed  # noqa: E402

TINY = ("benchmark=pdigits", "benchmark.num_tasks=2", "backbone.hidden=[64,32]", "trainer.epochs=2",
        "trainer.batch_size=32")


def _pair(tmp_path: Path, experiment: str = "hat_pmnist") -> dict:
    f = tmp_path / "pairs.yaml"
    f.write_text(json.dumps({"peer": "fakepeer", "pairs": {"p1": {"clrepro": {"experiment": experiment,
                                                                        "overrides": list(TINY)}}}}))
    return resolve(f, "p1")


def test_the_recording_holds_what_a_peer_replays(tmp_path, one_thread):
    rec = lockstep.record(_pair(tmp_path), 3, None, None)
    assert sorted(rec["tasks"]) == [1, 2] and rec["acc"].shape == (2, 2)
    t1, t2 = rec["tasks"][1], rec["tasks"][2]
    n = len(t1["y"])
    assert len(t1["orders"]) == len(t1["epoch_params"]) == 2  # one permutation and one snapshot per epoch
    assert all(sorted(o.tolist()) == list(range(n)) for o in t1["orders"])
    assert not torch.equal(t1["orders"][0], t1["orders"][1])
    assert {"fc.0.weight", "fc.1.bias", "emb.0", "head.weight"} <= set(t1["init"])
    assert not torch.equal(t1["init"]["emb.0"], t2["init"]["emb.0"])  # re-drawn for the new task
    assert t2["init"]["fc.0.weight"].equal(t1["epoch_params"][-1]["fc.0.weight"])  # task 2 starts where 1 ended
    again = lockstep.record(_pair(tmp_path), 3, None, None)  # reproducible: the same recording, to the bit
    assert lockstep.divergence(again, rec) == {1: [0.0, 0.0], 2: [0.0, 0.0]}
    assert np.array_equal(again["acc"].numpy(), rec["acc"].numpy(), equal_nan=True)


def test_the_float_noise_floor_is_small_but_not_zero(tmp_path, one_thread):
    pair = _pair(tmp_path)
    base = lockstep.record(pair, 3, None, None)
    f = lockstep.floor(pair, 3, None, 1e-7, base)
    first = f["epochs"][1][0]
    assert 0 < first < 1e-4  # a rounding-sized start moves every weight by about that much, no more
    assert f["perturb"] == 1e-7


def test_a_negative_control_differs_from_the_step_it_touches(tmp_path, one_thread):
    pair = _pair(tmp_path, "adahat_pmnist")
    base = lockstep.record(pair, 3, None, None)
    ctl = lockstep.record(pair, 3, None, None, ["algorithm.adjustment_intensity=0.5"])
    d = lockstep.divergence(ctl, base)
    assert d[1] == [0.0, 0.0]  # AdaHAT's α acts only on units an earlier task used: none in task 1
    assert min(d[2]) > 1e-3


def _report(seed: int, worst: float, aa_peer: float, aa_clrepro: float, ks: float = 0.5) -> dict:
    epochs = [{"fc.0.weight": worst, "head.weight": worst / 2}] * 2
    task = {"match_max_distance": 0.0, "first_batch_max_diff": 0.0, "first_batch_labels_equal": True,
            "init_ks": {"fc.0.weight": ks}, "epochs": epochs}
    return {"seed": seed, "tasks": {"1": task, "2": task}, "acc_peer": [[0.9, None], [0.8, aa_peer * 2 - 0.8]],
            "acc_clrepro": [[0.9, None], [0.8, aa_clrepro * 2 - 0.8]], "control_overrides": []}


def _book(reports, floor=None):
    pair = {"id": "p1", "epochs": 1}
    book = {}
    for r in reports:
        fl = None if floor is None else {"perturb": 1e-7, "epochs": {"1": [floor], "2": [floor]}, "acc_max_abs_diff": 0}
        rec = lockstep_ledger.compact(json.loads(json.dumps(r)), fl)
        rec.update(_peer="fakepeer", _pair="p1", _hash=lockstep_ledger.pair_hash(pair))
        book[("fakepeer", "p1", rec["seed"], rec["_hash"])] = rec
    return lockstep_ledger.summary(book, "fakepeer", pair, 1.0), pair


def test_the_summary_names_what_the_replays_show():
    s, _ = _book([_report(k, 0.0, 0.85, 0.85) for k in (1, 2, 3)])
    assert s["status"] == "bitwise equal" and s["tost_p"] == 0.0 and s["equivalent"]
    s, _ = _book([_report(k, 2e-7, 0.85, 0.85) for k in (1, 2, 3)])
    assert s["status"] == "equal to float precision"
    s, _ = _book([_report(k, 0.03, 0.85 + k / 1000, 0.85) for k in (1, 2, 3)], floor=0.02)
    assert s["status"] == "at the float-noise floor" and s["equivalent"]  # ΔAA ≤ 0.3 point on every seed
    s, _ = _book([_report(k, 0.3, 0.85, 0.85) for k in (1, 2, 3)], floor=0.02)
    assert s["status"] == "differs"
    s, _ = _book([_report(k, 0.0, 0.85 + 0.03 * (-1) ** k, 0.85) for k in (1, 2, 3, 4)])
    assert not s["equivalent"]  # 3-point paired differences: not within ±1
    s, _ = _book([_report(k, 0.0, 0.85, 0.85, ks=1e-6) for k in (1, 2, 3)])
    assert not s["init_same_distribution"] and not s["equivalent"]  # the tools initialise differently


def test_an_undecided_row_is_decided_by_its_lockstep_runs(tmp_path):
    pairs, out = tmp_path / "fake.yaml", tmp_path / "results"
    pairs.write_text(PAIRS % "trainer.epochs=2")
    runs = tmp_path / "runs"
    rng = np.random.default_rng(0)
    for s in (1, 2, 3):  # 3-point spreads, equal means: the seeded TOST cannot decide
        _seed(runs, "clrepro", s, 0.80 + rng.normal(0, 0.03))
        _seed(runs, "fakepeer", s, 0.80 + rng.normal(0, 0.03))
    header, row = (line.split(",") for line in _compare(runs, pairs, out)[:2])
    assert row[header.index("verdict")] == "undecided"
    lock = tmp_path / "lockstep" / "fakepeer" / "p1"
    for s in (1, 2, 3):
        (lock / f"seed{s}").mkdir(parents=True)
        (lock / f"seed{s}" / "report.json").write_text(json.dumps(_report(s, 0.0, 0.8, 0.8)))
    header, row = (line.split(",") for line in _compare(runs, pairs, out)[:2])
    assert row[header.index("verdict")] == "equivalent (lockstep)"
    md = (out / "parity.md").read_text()
    assert "| fakepeer | p1 | 3 | bitwise equal |" in md
    assert len((out / "lockstep.jsonl").read_text().splitlines()) == 3
    subprocess.run(["rm", "-r", str(tmp_path / "lockstep")], check=True)  # a new machine: the ledger keeps them
    header, row = (line.split(",") for line in _compare(runs, pairs, out)[:2])
    assert row[header.index("verdict")] == "equivalent (lockstep)"
