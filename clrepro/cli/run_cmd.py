"""`clrepro run EXPERIMENT [key=value ...] [--out DIR]`: one experiment, its references, metrics and run folder."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path


def default_out(name: str) -> Path:
    """outputs/<name>/<timestamp>, with a suffix if a run of the same second already has that folder."""
    base = Path("outputs") / name / datetime.now().strftime("%Y%m%d-%H%M%S")
    out, i = base, 1
    while out.exists():
        i += 1
        out = base.with_name(f"{base.name}-{i}")
    return out


def main(args) -> int:
    from clrepro.config.load import load_experiment
    from clrepro.files import check_output_dir

    cfg = load_experiment(args.experiment, args.overrides)
    out = check_output_dir(args.out if args.out else default_out(cfg.name), "--out")  # before any training step
    from clrepro.console import ConsoleProgress, console, summary
    from clrepro.engine.experiment import RunFailed, run_experiment

    listeners = [] if args.quiet else [ConsoleProgress("main")]
    ref_listeners = [] if args.quiet else [ConsoleProgress("reference", quiet=True)]
    try:
        result = run_experiment(cfg, out, listeners, ref_listeners)
    except RunFailed as e:
        print(f"error: run {cfg.name} failed: {e} ({e.where()})", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        partial = getattr(e, "clrepro_partial", None)
        where = partial.where() if partial is not None else "nothing was written"
        print(f"interrupted: run {cfg.name} stopped ({where})", file=sys.stderr)
        return 130
    summary(result, cfg.name)
    console.print(f"run folder: {out}")
    return 0
