"""``glccl exposure``: the exposure audit (``cluster.exposure``) of process trees and of local clusters.

    glccl exposure --pid PID [--pid PID2]                 # a training run, a sweep, `glccl ui`, ...
    glccl exposure --cluster-dir runs/cluster             # a local cluster (also: python -m cluster.local audit)

Prints one line per listening socket with its verdict; exits 1 when any socket is OPEN, 2 when there is nothing to
audit. The audit and its verdicts are described in ``cluster.exposure``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cluster import exposure
from cluster.exposure import audit, cluster_audit, format_report
from cluster.local import ClusterError, LocalCluster
from cluster.processes import process_tree


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="glccl exposure", description=exposure.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pid", type=int, action="append", default=[], help="root of a process tree (repeatable)")
    p.add_argument("--cluster-dir", default=None, help="a local cluster's dir (python -m cluster.local up)")
    p.add_argument("--token-file", default=None, help="the Ray token of the processes, for the control probes")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if not args.pid and not args.cluster_dir:
        p.error("give --pid PID or --cluster-dir DIR")
    try:
        findings = []
        if args.cluster_dir:
            findings += cluster_audit(LocalCluster.load(args.cluster_dir))
        if args.pid:
            token = Path(args.token_file).read_text().strip() if args.token_file else None
            procs = process_tree([(pid, None) for pid in args.pid])
            if not procs:
                raise ClusterError(f"no process with PID {', '.join(map(str, args.pid))}")
            findings += audit(procs, token)
    except (ClusterError, OSError) as e:
        print(f"glccl exposure: {e}", file=sys.stderr)
        return 2
    print(format_report(findings))
    return 1 if any(f.verdict == "OPEN" for f in findings) else 0


if __name__ == "__main__":
    sys.exit(main())
