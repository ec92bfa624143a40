"""Bounds shared by the config schema, the file readers and the CLI: what the libraries below accept."""

from __future__ import annotations

SEED_MAX = 2**32 - 1  # numpy's (and Optuna's) seeds are 32-bit; Lightning seeds numpy with the run seed
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # torch and numpy integers
MAX_TASKS = 1000  # an accuracy matrix is T x T floats: 1000 tasks are 8 MB, a typo of 10**9 would be EiB
MAX_FILE_BYTES = 64 * 2**20  # config, spec and CSV files are read whole
NAME_MAX = 255  # one path component (ext4, APFS, NTFS)
PATH_MAX = 4096
