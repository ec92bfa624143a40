"""`clrepro metrics ACC.csv [--independent] [--joint] [--random]`: metrics from matrix files, as one JSON object."""

from __future__ import annotations

import json


def main(args) -> int:
    from clrepro.errors import UserError
    from clrepro.metrics.cl import compute_cl_metrics
    from clrepro.metrics.io import read_acc_matrix, read_joint_row

    acc = read_acc_matrix(args.acc)
    T = acc.shape[1]
    refs = {}
    for kind, reader in (("independent", read_acc_matrix), ("joint", read_joint_row), ("random", read_acc_matrix)):
        path = getattr(args, kind)
        if path:
            refs[kind] = reader(path)
            if refs[kind].shape[-1] != T:
                raise UserError(f"{path}: --{kind} has {refs[kind].shape[-1]} tasks, {args.acc} has {T}")
    m = compute_cl_metrics(acc, fr_variant=args.fr_variant, **refs)
    print(json.dumps({k: m[k] for k in ("AA", "BWT", "FWT", "FR")}))
    return 0
