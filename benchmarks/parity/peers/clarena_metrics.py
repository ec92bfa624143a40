"""CLArena 1.1.0's own AA, BWT, FWT and FR for a main acc.csv and its reference acc.csv files, as JSON.

    python clarena_metrics.py --main acc.csv --refjoint refjoint/acc.csv --refindependent refindependent/acc.csv \
        --refrandom refrandom/acc.csv [--tasks 5]

Runs inside the clarena venv. AA is the `average_accuracy` of the last row of the main acc.csv
(`clarena.metrics.CLAccuracy` wrote it); BWT, FWT and FR are what `clarena.pipelines.CLFullEvaluation`
writes to bwt.csv / fwt.csv / fr.csv for these files (its config built by CLArena's own
`preprocess_config(..., "CL_FULL_EVAL_ATTACHED")`), read at the last task. A metric whose reference is
missing is null. `--dir` keeps CLFullEvaluation's output files (default: a temporary folder).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path

METRIC_CODE = ("AA: clarena.metrics.CLAccuracy average_accuracy (last row of acc.csv); BWT/FWT/FR: "
               "clarena.pipelines.CLFullEvaluation (bwt.csv/fwt.csv at the last task, fr.csv)")


def quiet() -> None:
    """CLArena's and Lightning's INFO logging and their warnings off (the results are unaffected)."""
    import lightning  # noqa: F401  (creates its loggers, so that their levels can be set)

    warnings.filterwarnings("ignore")
    prefixes = ("clarena", "lightning", "pytorch_lightning", "lightning_utilities", "lightning_fabric")
    names = [n for n in logging.root.manager.loggerDict if n.startswith(prefixes)]
    for name in (*prefixes, *names):
        logging.getLogger(name).setLevel(logging.ERROR)


def _last_row(path: Path, column: str) -> float | None:
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r.get(column) not in (None, "")]
    return float(rows[-1][column]) if rows else None


def num_tasks(main_acc_csv: Path) -> int:
    """T: the number of test_on_task_* columns of the main acc.csv."""
    with open(main_acc_csv, newline="", encoding="utf-8") as f:
        header = next(csv.reader(f))
    return sum(c.startswith("test_on_task_") for c in header)


def score(main: Path, refjoint: Path | None, refindependent: Path | None, refrandom: Path | None,
          tasks: int | None = None, out_dir: Path | None = None) -> dict:
    """{"AA", "BWT", "FWT", "FR"} by CLArena's code; out_dir receives results/{bwt,fwt,fr}.csv and the plots."""
    from omegaconf import OmegaConf

    from clarena.pipelines import CLFullEvaluation
    from clarena.utils.cfg import preprocess_config

    quiet()
    T = tasks or num_tasks(main)
    tmp = None
    if out_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="clarena_metrics_")
        out_dir = Path(tmp.name)
    res = {"AA": _last_row(main, "average_accuracy"), "BWT": None, "FWT": None, "FR": None}
    try:
        if refjoint and refindependent and refrandom:
            # CL_FULL_EVAL_ATTACHED reads <output_dir>/results/acc.csv as the main file: put it there.
            (out_dir / "results").mkdir(parents=True, exist_ok=True)
            here = out_dir / "results" / "acc.csv"
            if Path(main).resolve() != here.resolve():
                here.write_bytes(Path(main).read_bytes())
            cfg = OmegaConf.create({"train_tasks": T, "output_dir": str(out_dir), "misc": {"timestamp": "parity"},
                                    "refjoint_acc_csv_path": str(refjoint),
                                    "refindependent_acc_csv_path": str(refindependent),
                                    "refrandom_acc_csv_path": str(refrandom)})
            CLFullEvaluation(preprocess_config(cfg, type="CL_FULL_EVAL_ATTACHED")).run()
            r = out_dir / "results"
            res["BWT"] = _last_row(r / "bwt.csv", "BWT") if T >= 3 else None  # CLArena writes rows N=3..T only
            res["FWT"] = _last_row(r / "fwt.csv", "FWT") if T >= 2 else None
            res["FR"] = _last_row(r / "fr.csv", "FR")
    finally:
        if tmp is not None:
            tmp.cleanup()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--main", required=True, type=Path, help="the main run's acc.csv")
    ap.add_argument("--refjoint", type=Path)
    ap.add_argument("--refindependent", type=Path)
    ap.add_argument("--refrandom", type=Path)
    ap.add_argument("--tasks", type=int, help="T (default: the test_on_task_* columns of --main)")
    ap.add_argument("--dir", type=Path, help="keep CLFullEvaluation's output here")
    a = ap.parse_args()
    for p in (a.main, a.refjoint, a.refindependent, a.refrandom):
        if p is not None and not p.is_file():
            sys.exit(f"clarena_metrics: no such file: {p}")
    try:
        import clarena  # noqa: F401
    except ImportError:
        sys.exit("clarena_metrics: clarena is not importable; run with the clarena venv's python "
                 "(bash benchmarks/parity/setup_peer.sh clarena prints its path)")
    os.environ.setdefault("WANDB_MODE", "disabled")
    print(json.dumps({**score(a.main, a.refjoint, a.refindependent, a.refrandom, a.tasks, a.dir),
                      "metric_code": METRIC_CODE}))


if __name__ == "__main__":
    main()
