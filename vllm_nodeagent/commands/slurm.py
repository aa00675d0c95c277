"""`vllm-nodeagent doctor --slurm [health|prolog|epilog]`: doctor's checks, then drain or resume the node.

Output: one line per check that drains (``FAIL <id>: <current> (want <desired>)``) and one line per action; with
--json the report plus a ``slurm`` object. Exit 0 when nothing drains; 1 when the node was (or stays) drained for
a failing check; 3 when scontrol could not be run or refused. Prolog and epilog exit 1 on a failure, so Slurm
requeues the job or holds the node as it does for any failing prolog/epilog.
"""

from __future__ import annotations

import argparse
import sys

from vllm_nodeagent.context import EXIT_FAILED, EXIT_HOST, EXIT_OK, Context, print_json
from vllm_nodeagent.doctor import summary
from vllm_nodeagent.slurm import SlurmError, run_mode


def cmd_slurm(ctx: Context, args: argparse.Namespace) -> int:
    try:
        checks, outcome = run_mode(ctx, args.slurm, args.node, args.drain_on_warn)
    except SlurmError as exc:
        print(f"vllm-nodeagent: doctor --slurm: {exc}", file=sys.stderr)
        return EXIT_HOST
    if args.json:
        print_json({"checks": [c.to_json() for c in checks], "summary": summary(checks), "slurm": outcome.to_json()})
    else:
        by_id = {c.id: c for c in checks}
        for cid in outcome.failing:
            c = by_id[cid]
            want = f" (want {c.desired})" if c.desired else ""
            print(f"{c.status.upper()} {cid}: {' '.join((c.current or '-').split())}{want}")
        for line in outcome.lines:
            print(line)
    return EXIT_FAILED if outcome.failing else EXIT_OK
