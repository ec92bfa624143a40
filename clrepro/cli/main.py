"""`clrepro` entry point: argparse with lazily imported subcommands (so `--help` answers fast)."""

from __future__ import annotations

import argparse
import sys

COMMANDS = {
    "run": ("clrepro.cli.run_cmd", "run one CL experiment (and the references its metrics need)"),
    "metrics": ("clrepro.cli.metrics_cmd", "compute AA, BWT, FWT, FR from acc.csv matrix files"),
    "sweep": ("clrepro.cli.sweep_cmd", "hyperparameter sweep: Optuna in Ray Tune, multi-seed trials, MLflow"),
    "table": ("clrepro.cli.table_cmd", "mean ± std table from logged runs, beside the published numbers"),
    "ui": ("clrepro.cli.ui_cmd", "start the MLflow UI on the tracking store"),
    "list": ("clrepro.cli.list_cmd", "list algorithms, benchmarks, backbones and experiments"),
}


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (the usage is what --help is for), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="clrepro", description="Sweep and reproduce continual-learning results.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (module, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.set_defaults(_module=module)
        _ARGS[name](sp)
    return p


def _run_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("experiment", help="config name under configs/experiment/ or a YAML path")
    sp.add_argument("overrides", nargs="*", help="dotted overrides, e.g. seed=3 algorithm.s_max=200")
    sp.add_argument("--out", help="run folder (default outputs/<name>/<timestamp>)")
    sp.add_argument("--quiet", action="store_true", help="no progress, only the summary")
    sp.add_argument("--plugin", action="append", default=[], metavar="PATH",
                    help="load a regularizer plug-in (.py file, or ep:NAME for an entry point) before the config "
                         "is validated; select it with algorithm.name=NAME (repeatable)")


def _metrics_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("acc", help="the main run's acc.csv")
    sp.add_argument("--independent", help="independent reference acc.csv (for FWT, FR^I)")
    sp.add_argument("--joint", help="joint reference acc.csv (one row; for FR)")
    sp.add_argument("--random", help="random reference acc.csv (for FR)")
    sp.add_argument("--fr-variant", choices=("joint", "independent"), default="joint")


def _list_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("what", nargs="?", choices=("algorithms", "benchmarks", "backbones", "experiments", "sources"),
                    help="one section only")


def _sweep_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("file", help="sweep file, e.g. sweeps/quickstart.yaml")
    sp.add_argument("--address", help="join an existing Ray cluster (auto or HOST:PORT); default: start a local one")
    sp.add_argument("--tracking-uri", help="MLflow tracking URI (default: the sweep file's, sqlite:///mlflow.db)")
    sp.add_argument("--storage", help="Ray Tune storage path (default: the sweep file's, ./ray_results)")
    sp.add_argument("--resume", nargs="?", const="latest", metavar="SWEEP_DIR",
                    help="continue an interrupted sweep (the latest of this name, or the given folder)")
    sp.add_argument("--num-cpus", type=_positive, help="CPUs of the local Ray instance (default: all)")
    sp.add_argument("--variant", action="append", metavar="NAME",
                    help="run only this variant of a file with `variants:` (repeatable; default: all, in order)")
    sp.add_argument("--plugin", action="append", default=[], metavar="PATH",
                    help="a regularizer plug-in (.py file, or ep:NAME for an entry point), loaded here and carried "
                         "to every Ray worker; select it with algorithm.name=NAME in the sweep (repeatable)")
    sp.add_argument("--quiet", action="store_true", help="no live progress")


def _table_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("spec", help="table spec, e.g. paper_tables/ci/quickstart.yaml")
    sp.add_argument("--run", action="store_true", help="produce missing runs first (sweeps, experiment seeds)")
    sp.add_argument("--jobs", type=_positive, default=1, help="with --run: experiment seeds run at once, one torch "
                                                              "thread each (default 1)")
    sp.add_argument("--out", help="write SPEC.md, SPEC.tex, SPEC.csv and SPEC.png here (and log them to MLflow)")
    sp.add_argument("--tracking-uri", help="MLflow store to read (default: the spec's, sqlite:///mlflow.db)")
    sp.add_argument("--no-log", action="store_true", help="with --out: do not log the files to MLflow")


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1..65535)") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (1..65535)")
    return port


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} is not a positive integer")
    return n


def _ui_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--tracking-uri", help="MLflow store (default sqlite:///mlflow.db)")
    sp.add_argument("--host", default="127.0.0.1", help="bind address (default loopback)")
    sp.add_argument("--port", type=_port, default=5000)


_ARGS = {"run": _run_args, "metrics": _metrics_args, "sweep": _sweep_args, "table": _table_args, "ui": _ui_args, "list": _list_args}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """argparse, with `run`'s key=value overrides accepted after options too (`run X --out d seed=3`)."""
    p = parser()
    args, extra = p.parse_known_args(argv)
    if extra:
        if getattr(args, "command", None) == "run" and all(not a.startswith("-") for a in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            p.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


# Commands whose process may end without tearing the interpreter down once they return: they start no
# thread, server or worker that needs an exit handler (a sweep's Ray and MLflow do).
FAST_EXIT = frozenset({"run", "metrics", "list"})


def entry() -> None:
    """The `clrepro` console script: main(), then exit. After a FAST_EXIT command every file it wrote is
    closed; the streams and the logging handlers are flushed and the process ends with os._exit, skipping
    the teardown of torch's, sympy's and matplotlib's modules (about 1 s of a 7 s `clrepro run`)."""
    import os
    import threading

    args = _parse(None)
    code = _dispatch(args)
    if getattr(args, "command", None) in FAST_EXIT and threading.active_count() == 1:
        import logging

        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def main(argv: list[str] | None = None) -> int:
    return _dispatch(_parse(argv))


def _dispatch(args: argparse.Namespace) -> int:
    """Run the parsed command; its exit code (one line on stderr for a user error or a bug)."""
    if not getattr(args, "command", None):
        parser().print_help()
        return 0
    import importlib

    from clrepro.environment import check_environment, flag
    from clrepro.errors import UserError

    try:
        check_environment()
        if getattr(args, "plugin", None):  # before the config is composed and validated
            from clrepro.plugins import load_plugin
            for spec in args.plugin:
                load_plugin(spec)
        return importlib.import_module(args._module).main(args) or 0
    except UserError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug, not the user's input: still one line; the traceback on request
        if flag("CLREPRO_DEBUG"):
            raise
        if isinstance(e, OSError) and e.filename is not None:  # a path the checks did not foresee
            print(f"error: {str(e.filename)[:300]}: {e.strerror or e}", file=sys.stderr)
            return 2
        print(f"error: unexpected {type(e).__name__}: {_one_line(e)} (a clrepro bug; CLREPRO_DEBUG=1 shows the "
              "traceback)", file=sys.stderr)
        return 1


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split("\n")).strip()
    return text if len(text) <= 2000 else text[:2000] + "..."


if __name__ == "__main__":
    entry()
