"""`clrepro metrics ACC.csv [--independent] [--joint] [--random]`: metrics from matrix files, as one JSON object."""

from __future__ import annotations

import json

import numpy as np


def main(args) -> int:
    from clrepro.errors import UserError
    from clrepro.metrics.cl import compute_cl_metrics
    from clrepro.metrics.io import read_acc_matrix, read_joint_row

    acc = read_acc_matrix(args.acc)
    T = acc.shape[1]
    if np.isnan(acc[T - 1]).all():  # AA, BWT and FR are read after the last task
        raise UserError(f"{args.acc}: no row for after_training_task {T}, the last task (the metrics are computed "
                        "after it)")
    refs = {}
    for kind, reader in (("independent", read_acc_matrix), ("joint", read_joint_row), ("random", read_acc_matrix)):
        path = getattr(args, kind)
        if path is not None:
            if not path.strip():
                raise UserError(f"--{kind} '': not a path (give an acc.csv, or leave the option out)")
            refs[kind] = reader(path)
            if refs[kind].shape[-1] != T:
                raise UserError(f"{path}: --{kind} has {refs[kind].shape[-1]} tasks, {args.acc} has {T}")
    m = compute_cl_metrics(acc, fr_variant=args.fr_variant, **refs)
    print(json.dumps({k: m[k] for k in ("AA", "BWT", "FWT", "FR")}))
    return 0
