"""`vllm-nodeagent doctor`: the report as a table or JSON; exit 1 on a FAIL (with --strict, on a WARN too)."""

from __future__ import annotations

import argparse
from typing import Optional

from vllm_nodeagent.checks.base import STATUSES, CheckResult
from vllm_nodeagent.context import Context, print_json
from vllm_nodeagent.doctor import exit_code, run_checks, summary


def cmd_doctor(ctx: Context, args: argparse.Namespace) -> int:
    if getattr(args, "slurm", None):
        from vllm_nodeagent.commands.slurm import cmd_slurm

        return cmd_slurm(ctx, args)
    checks = run_checks(ctx)
    if args.json:
        print_json({"checks": [c.to_json() for c in checks], "summary": summary(checks)})
    else:
        print(render(checks))
    return exit_code(checks, args.strict)


def render(checks: list[CheckResult]) -> str:
    rows = [["STATUS", "CHECK", "CURRENT", "DESIRED", "HINT"]]
    for c in checks:
        hint = c.hint or c.detail
        rows.append([c.status.upper(), c.id, _short(c.current), _short(c.desired), hint])
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join([*(r[i].ljust(widths[i]) for i in range(4)), r[4]]).rstrip() for r in rows]
    counts = summary(checks)
    lines.append("")
    lines.append(", ".join(f"{counts[s]} {s}" for s in STATUSES))
    return "\n".join(lines)


def _short(value: Optional[str], width: int = 40) -> str:
    if value is None:
        return "-"
    value = " ".join(value.split())  # the kernel separates sysctl triples with tabs
    return value if len(value) <= width else value[: width - 1] + "…"
