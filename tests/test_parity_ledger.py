"""The parity seed ledger: seeds run on another machine count, byte for byte, unless the pair's protocol changed."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from clrepro.metrics.io import write_acc_csv

ROOT = Path(__file__).resolve().parents[1]
COMPARE = ROOT / "benchmarks" / "parity" / "compare.py"
sys.path.insert(0, str(COMPARE.parent))

import ledger  # noqa: E402
from pairs import resolve  # noqa: E402

PAIRS = """peer: fakepeer
common:
  seeds: {first: 1, count: 6}
  metrics: [AA]
  clrepro: {experiment: finetuning_pmnist, overrides: [%s]}
pairs:
  p1:
    explain: why it differs
"""


def _seed(runs: Path, tool: str, seed: int, aa: float) -> None:
    d = runs / "fakepeer" / "p1" / tool / f"seed{seed}"
    d.mkdir(parents=True)
    acc = np.array([[aa, np.nan], [aa - 0.01, aa + 0.01]])
    write_acc_csv(d / "acc.csv", acc)
    (d / "metrics.json").write_text(json.dumps({"seed": seed, "AA": float(np.nanmean(acc[-1])), "wall_s": 1.0}))
    (d.parent / "env.json").write_text(json.dumps({"tool": tool, "python": "3.11"}))


def _compare(runs: Path, pairs: Path, out: Path) -> list[str]:
    subprocess.run([sys.executable, str(COMPARE), "--runs", str(runs), "--pairs", str(pairs), "--out", str(out)],
                   check=True, capture_output=True, text=True)
    return (out / "parity.csv").read_text().splitlines()


def _n(csv_lines: list[str]) -> int:
    header = csv_lines[0].split(",")
    return int(csv_lines[1].split(",")[header.index("n_clrepro")])


def test_seeds_from_an_earlier_machine_count_and_a_changed_protocol_starts_over(tmp_path):
    pairs, out = tmp_path / "fake.yaml", tmp_path / "results"
    pairs.write_text(PAIRS % "trainer.epochs=2")
    first = tmp_path / "cache1"
    for s in (1, 2, 3):
        _seed(first, "clrepro", s, 0.80 + s / 100)
        _seed(first, "fakepeer", s, 0.81 + s / 100)
    assert _n(_compare(first, pairs, out)) == 3
    book = (out / "seeds.jsonl").read_text().splitlines()
    assert len(book) == 6

    second = tmp_path / "cache2"  # a new machine: an empty cache, then one more seed
    _seed(second, "clrepro", 4, 0.84)
    _seed(second, "fakepeer", 4, 0.85)
    lines = _compare(second, pairs, out)
    assert _n(lines) == 4
    expect = np.array([0.80 + s / 100 for s in (1, 2, 3, 4)]) * 100  # the clrepro seeds' AA, all four
    header = lines[0].split(",")
    assert lines[1].split(",")[header.index("clrepro_value")].startswith(f"{expect.mean():.2f}")
    assert len((out / "seeds.jsonl").read_text().splitlines()) == 8
    md = (out / "parity.md").read_text()
    assert "| fakepeer | p1 | AA | 4 |" in md  # the peer's matrices, restored from the ledger, scored again
    assert json.loads((out / "environments.json").read_text())["fakepeer"]["tool"] == "fakepeer"

    # restored matrices are the runners' files byte for byte
    book = ledger.read(out / "seeds.jsonl")
    restored = tmp_path / "restored"
    assert ledger.materialize(book, "fakepeer", resolve(pairs, "p1"), restored) == 8
    assert (restored / "fakepeer/p1/fakepeer/seed1/acc.csv").read_bytes() == \
        (first / "fakepeer/p1/fakepeer/seed1/acc.csv").read_bytes()

    pairs.write_text(PAIRS % "trainer.epochs=3")  # another protocol: the earlier seeds no longer count
    lines = _compare(tmp_path / "empty", pairs, out)
    assert _n(lines) == 0


def test_the_pair_hash_ignores_seed_lists_and_prose_only():
    base = {"id": "p", "epochs": 5, "seed_list": [1, 2], "explain": "a", "clrepro": {"overrides": ["x=1"]}}
    assert ledger.pair_hash(base) == ledger.pair_hash({**base, "seed_list": [1, 2, 3], "explain": "b"})
    assert ledger.pair_hash(base) != ledger.pair_hash({**base, "epochs": 6})
    assert ledger.pair_hash(base) != ledger.pair_hash({**base, "clrepro": {"overrides": ["x=2"]}})
