"""A run's manifest: seed, config hash, package versions, git commit, device and wall time."""

from __future__ import annotations

import platform
import socket
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

PACKAGES = ("clrepro", "torch", "lightning", "numpy", "hydra-core", "omegaconf", "scikit-learn", "mlxtend",
            "ray", "optuna", "mlflow", "captum", "torchvision")


def package_versions() -> dict[str, str | None]:
    out = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


def git_state(path: Path | None = None) -> dict[str, str | bool | None]:
    """The commit of the clrepro checkout (and whether it has uncommitted changes), if it is one."""
    path = path or Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True,
                                timeout=5).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=path,
                                    capture_output=True, text=True, timeout=5).stdout.strip()) if commit else None
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {"commit": commit, "dirty": dirty}


def manifest(seed: int, config_hash: str, device: str, wall_seconds: float, extra: dict | None = None) -> dict:
    """Everything needed to say what produced a run."""
    import torch

    return {
        "seed": seed,
        "config_hash": config_hash,
        "packages": package_versions(),
        "git": git_state(),
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "argv": sys.argv,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_seconds": round(wall_seconds, 3),
        **(extra or {}),
    }
