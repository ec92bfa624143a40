"""`clrepro run EXPERIMENT [key=value ...] [--out DIR]`: one experiment, its references, metrics and run folder."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path


def main(args) -> int:
    from clrepro.config.load import load_experiment

    cfg = load_experiment(args.experiment, args.overrides)
    from clrepro.console import ConsoleProgress, console, summary
    from clrepro.engine.experiment import run_experiment

    out = Path(args.out) if args.out else Path("outputs") / cfg.name / datetime.now().strftime("%Y%m%d-%H%M%S")
    listeners = [] if args.quiet else [ConsoleProgress("main")]
    ref_listeners = [] if args.quiet else [ConsoleProgress("reference", quiet=True)]
    result = run_experiment(cfg, out, listeners, ref_listeners)
    summary(result, cfg.name)
    console.print(f"run folder: {out}")
    return 0
