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


def _make_folder(out: Path) -> list[Path]:
    """Create the run folder (and its missing parents) now; the folders created, innermost first."""
    from clrepro.errors import UserError

    missing = [p for p in [out, *out.parents] if not p.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out}: cannot create the folder ({e.strerror or e})") from None
    return missing


def main(args) -> int:
    from clrepro.config.load import load_experiment
    from clrepro.files import check_output_dir

    cfg = load_experiment(args.experiment, args.overrides)
    out = check_output_dir(args.out if args.out is not None else default_out(cfg.name), "--out")  # before training
    from clrepro.console import ConsoleProgress, console, summary
    from clrepro.engine.experiment import RunFailed, run_experiment
    from clrepro.errors import UserError

    listeners = [] if args.quiet else [ConsoleProgress("main")]
    ref_listeners = [] if args.quiet else [ConsoleProgress("reference", quiet=True)]
    created = _make_folder(out)
    try:
        result = run_experiment(cfg, out, listeners, ref_listeners, last_run=True)
    except RunFailed as e:
        print(f"error: run {cfg.name} failed: {e} ({e.where()})", file=sys.stderr)
        return e.exit_code
    except UserError:  # refused before training (a device, the data): leave no empty run folder behind
        for d in created:
            try:
                d.rmdir()
            except OSError:
                break
        raise
    except KeyboardInterrupt as e:
        partial = getattr(e, "clrepro_partial", None)
        where = partial.where() if partial is not None else "nothing was written"
        print(f"interrupted: run {cfg.name} stopped ({where})", file=sys.stderr)
        return 130
    summary(result, cfg.name)
    console.print(f"run folder: {out}")
    return 0
