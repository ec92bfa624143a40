"""`clrepro ui`: the MLflow UI on the sweep's tracking store (loopback by default)."""

from __future__ import annotations

import os
import subprocess
import sys


def main(args) -> int:
    import socket

    from clrepro.errors import UserError
    from clrepro.tracking.mlflow_store import checked_tracking_uri

    uri = checked_tracking_uri(args.tracking_uri, must_exist=True)
    if uri.startswith(("http://", "https://", "databricks")):
        raise UserError(f"--tracking-uri {uri}: a tracking server has its own UI there; `clrepro ui` serves a "
                        "database store (sqlite:///PATH, postgresql://...)")
    try:  # the address must be free and bindable now: mlflow's own error would come as a traceback
        infos = socket.getaddrinfo(args.host, args.port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as sock:
            sock.bind(infos[0][4])
    except (OSError, UnicodeError) as e:
        raise UserError(f"--host {args.host} --port {args.port}: cannot listen there ({getattr(e, 'strerror', None) or e})") \
            from None
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host,
           "--port", str(args.port), "--workers", "1"]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    print(f"MLflow UI on http://{args.host}:{args.port} for {uri} (Ctrl-C stops it)")
    try:
        return subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        return 0
