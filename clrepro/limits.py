"""Bounds shared by the config schema, the file readers and the CLI: what the libraries below accept."""

from __future__ import annotations

SEED_MAX = 2**32 - 1  # numpy's (and Optuna's) seeds are 32-bit; Lightning seeds numpy with the run seed
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # torch and numpy integers
FLOAT32_MAX = 3.4028234663852886e38  # the largest finite float32: a larger hyperparameter overflows in a tensor
FLOAT32_TINY = 1.1754943508222875e-38  # the smallest normal float32: a smaller nonzero one flushes towards 0
MAX_TASKS = 1000  # an accuracy matrix is T x T floats: 1000 tasks are 8 MB, a typo of 10**9 would be EiB
MAX_FILE_BYTES = 64 * 2**20  # config, spec and CSV files are read whole
MAX_YAML_VALUES = 10_000  # values in a YAML file once its aliases are expanded (shipped files: < 700; Hydra
# takes about 10 s for 100,000, and a billion-laughs file has 10**9)
NAME_MAX = 255  # one path component (ext4, APFS, NTFS)
PATH_MAX = 4096
MAX_PATH_DEPTH = 128  # folders in an output path (pathlib's mkdir recurses once per missing folder)
