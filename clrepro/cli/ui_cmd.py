"""`clrepro ui`: the MLflow UI on the sweep's tracking store (loopback by default), opening on training runs."""

from __future__ import annotations

import os
import subprocess
import sys


def main(args) -> int:
    import socket

    from clrepro.errors import UserError
    from clrepro.tracking.mlflow_store import check_store_contents, checked_tracking_uri

    uri = checked_tracking_uri(args.tracking_uri, must_exist=True, contents=False)  # its contents: once bindable
    if uri.startswith(("http://", "https://", "databricks")):
        raise UserError(f"--tracking-uri {uri}: a tracking server has its own UI there; `clrepro ui` serves a "
                        "database store (sqlite:///PATH, postgresql://...)")
    if not args.host.strip():  # '' would listen on every interface
        raise UserError("--host '': is empty (allowed: an address or host name, e.g. 127.0.0.1 or 0.0.0.0)")
    try:  # the address must be free and bindable now: mlflow's own error would come as a traceback
        infos = socket.getaddrinfo(args.host, args.port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as sock:
            sock.bind(infos[0][4])
    except (OSError, UnicodeError) as e:
        raise UserError(f"--host {args.host} --port {args.port}: cannot listen there ({getattr(e, 'strerror', None) or e})") \
            from None
    check_store_contents(uri)  # an unrelated SQLite database: MLflow would write its tables into it
    # --app-name clrepro: MLflow's server whose page defaults to "Model training" (clrepro/tracking/ui_app.py)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host,
           "--port", str(args.port), "--workers", "1", "--app-name", "clrepro"]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    base = f"http://{args.host}:{args.port}"
    print(f"MLflow UI on {base} for {uri} (Ctrl-C stops it)")
    _print_experiments(uri, base)
    try:
        return subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        return 0


def _print_experiments(uri: str, base: str, limit: int = 8) -> None:
    """The newest experiments with a link that opens each on its runs (in any browser)."""
    import logging

    from clrepro.tracking.ui_app import runs_url

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    try:
        from mlflow.tracking import MlflowClient

        exps = MlflowClient(uri).search_experiments(max_results=limit + 1, order_by=["creation_time DESC"])
    except Exception:  # the listing is a convenience; the UI itself reports store problems
        return
    exps = [e for e in exps if e.name != "Default"][:limit]
    for e in exps:
        print(f"  {e.name}: {runs_url(base, e.experiment_id)}")
