"""`clrepro ui`: the MLflow UI on the sweep's tracking store (loopback by default)."""

from __future__ import annotations

import os
import subprocess
import sys


def main(args) -> int:
    from clrepro.tracking.mlflow_store import absolute_tracking_uri

    uri = absolute_tracking_uri(args.tracking_uri)
    if uri.startswith("sqlite:///") and not os.path.exists(uri[len("sqlite:///"):]):
        from clrepro.errors import UserError

        raise UserError(f"--tracking-uri: {uri[len('sqlite:///'):]} does not exist (run a sweep first)")
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host,
           "--port", str(args.port), "--workers", "1"]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    print(f"MLflow UI on http://{args.host}:{args.port} for {uri} (Ctrl-C stops it)")
    try:
        return subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        return 0
