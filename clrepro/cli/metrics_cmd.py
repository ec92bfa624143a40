"""`clrepro metrics ACC.csv [--independent] [--joint] [--random]`: metrics from matrix files, as one JSON object."""

from __future__ import annotations

import json


def main(args) -> int:
    from clrepro.metrics.cl import compute_cl_metrics
    from clrepro.metrics.io import read_acc_matrix, read_joint_row

    acc = read_acc_matrix(args.acc)
    independent = read_acc_matrix(args.independent) if args.independent else None
    joint = read_joint_row(args.joint) if args.joint else None
    random = read_acc_matrix(args.random) if args.random else None
    m = compute_cl_metrics(acc, independent=independent, joint=joint, random=random, fr_variant=args.fr_variant)
    print(json.dumps({k: m[k] for k in ("AA", "BWT", "FWT", "FR")}))
    return 0
