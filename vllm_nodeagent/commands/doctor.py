"""`vllm-nodeagent doctor`: the report as a table or JSON; exit 1 on a FAIL (with --strict, on a WARN too).

Every hint line is one line a person can paste into a shell: the fix command (the agent as invoked, with --root
and --config, or the owning program's command), then the note as a shell comment; a hint that is only advice is a
comment by itself. ``bash -n`` accepts every one (tests/test_fix_hints.py)."""

from __future__ import annotations

import argparse
import shlex
from typing import Any, Optional

from vllm_nodeagent.checks.base import STATUSES, CheckResult
from vllm_nodeagent.context import Context, print_json
from vllm_nodeagent.doctor import exit_code, run_checks, summary


def cmd_doctor(ctx: Context, args: argparse.Namespace) -> int:
    if getattr(args, "slurm", None):
        from vllm_nodeagent.commands.slurm import cmd_slurm

        return cmd_slurm(ctx, args)
    checks = run_checks(ctx)
    invocation = ctx.invocation()
    if args.json:
        print_json({"checks": [check_json(c, invocation) for c in checks], "summary": summary(checks)}, "doctor")
    else:
        print(render(checks, invocation))
    return exit_code(checks, args.strict)


def fix_command(c: CheckResult, invocation: list[str]) -> Optional[list[str]]:
    """The argv that fixes ``c``; None when no command does (advice only, or nothing to fix)."""
    if c.fix is None:
        return None
    if c.fix.argv:
        return list(c.fix.argv)
    return [*invocation, *c.fix.args] if c.fix.args else None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def note_of(c: CheckResult) -> str:
    return _one_line(c.fix.note if c.fix is not None else c.hint)


def hint_line(c: CheckResult, invocation: list[str]) -> str:
    """``CMD  # note``, ``# advice``, or "": one pasteable shell line."""
    command = fix_command(c, invocation)
    note = note_of(c)
    comment = f"# {note}" if note else ""
    if command is None:
        return comment
    return f"{shlex.join(command)}  {comment}".rstrip()


def check_json(c: CheckResult, invocation: list[str]) -> dict[str, Any]:
    command = fix_command(c, invocation)
    note = note_of(c)
    fix = {"command": command, "note": note or None} if command is not None or note else None
    return {
        "id": c.id,
        "status": c.status,
        "current": c.current or None,  # null, not "": one way to say "nothing to show"
        "desired": c.desired or None,
        "hint": hint_line(c, invocation) or None,
        "detail": _one_line(c.detail) or None,
        "fix": fix,
    }


def render(checks: list[CheckResult], invocation: list[str]) -> str:
    rows = [["STATUS", "CHECK", "CURRENT", "DESIRED", "HINT"]]
    for c in checks:
        hint = hint_line(c, invocation) or (f"# {_one_line(c.detail)}" if c.detail else "")
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
