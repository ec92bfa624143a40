"""clrepro's environment variables, checked in one place before any command runs: a bad value is one line."""

from __future__ import annotations

import os
from pathlib import Path

from clrepro.errors import UserError

TRUE, FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


def flag(name: str) -> bool:
    """A boolean variable (1/true/yes/on or 0/false/no/off, any case; unset is false)."""
    return os.environ.get(name, "").strip().lower() in TRUE


def folder(name: str, value: str) -> Path:
    """`value` of variable `name` as a folder path: ~ expanded, made absolute; one line if it cannot be one."""
    from clrepro.files import path_problem
    from clrepro.limits import NAME_MAX, PATH_MAX

    if "\x00" in value:
        raise UserError(f"{name}={value!r}: not a valid path")
    try:
        p = Path(value).expanduser()
    except RuntimeError:  # ~user of an unknown user
        raise UserError(f"{name}={value}: cannot expand '{value.split('/')[0]}' (no such user's home folder)") from None
    p = p.absolute()
    if path_problem(p):
        raise UserError(f"{name}={value[:60]}...: path too long for the file system (at most {NAME_MAX} bytes "
                        f"per name, {PATH_MAX} in all)")
    if p.exists() and not p.is_dir():
        raise UserError(f"{name}={value}: is a file, not a folder")
    return p


def check_environment() -> None:
    """Every CLREPRO_* variable the commands read, checked before the command starts."""
    from clrepro.tracking.plots import SCALES

    for name in ("CLREPRO_DEBUG",):
        v = os.environ.get(name)
        if v is not None and v.strip().lower() not in TRUE + FALSE:
            raise UserError(f"{name}={v[:40]!r}: not a boolean (allowed: 1, true, yes, on, 0, false, no, off)")
    scale = os.environ.get("CLREPRO_PLOT_SCALE")
    if scale not in (None, "") and scale not in SCALES:
        raise UserError(f"CLREPRO_PLOT_SCALE={scale[:40]!r}: not a plot scale (allowed: {', '.join(SCALES)})")
    for name in ("CLREPRO_DATA", "CLREPRO_CONFIG_DIR"):
        v = os.environ.get(name)
        if v:
            folder(name, v)
