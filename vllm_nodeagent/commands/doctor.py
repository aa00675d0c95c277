"""`vllm-nodeagent doctor`: the report as a table or JSON; exit 1 on a FAIL (with --strict, on a WARN too).

Every hint line is one line a person can paste into a shell: the fix command (the agent as invoked, with --root
and --config, or the owning program's command), then the note as a shell comment; a hint that is only advice is a
comment by itself. ``bash -n`` accepts every one (tests/test_fix_hints.py)."""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from typing import Any, Optional

from vllm_nodeagent.checks import registry
from vllm_nodeagent.checks.base import CheckResult
from vllm_nodeagent.checks.status import Status
from vllm_nodeagent.context import EXIT_USAGE, Context, print_json
from vllm_nodeagent.doctor import exit_code, run_checks, summary


def cmd_doctor(ctx: Context, args: argparse.Namespace) -> int:
    if getattr(args, "slurm", None):
        from vllm_nodeagent.commands.slurm import cmd_slurm

        return cmd_slurm(ctx, args)
    if args.only:
        unknown = registry.unknown(args.only)
        if unknown:
            print(
                f"vllm-nodeagent: doctor --only {' '.join(unknown)}: no such check; known: "
                f"{', '.join(registry.known_ids())}",
                file=sys.stderr,
            )
            return EXIT_USAGE
    checks = run_checks(ctx, args.only)
    if args.only and not checks:
        print(f"vllm-nodeagent: doctor --only {' '.join(args.only)}: matches no check", file=sys.stderr)
        return EXIT_USAGE
    invocation = ctx.invocation()
    if args.json:
        print_json({"checks": [check_json(c, invocation) for c in checks], "summary": summary(checks)}, "doctor")
    else:
        tty = sys.stdout.isatty()
        width = None if args.wide or not tty else shutil.get_terminal_size().columns
        print(render(checks, invocation, width, use_colour(sys.stdout)))
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
        "status": c.status.value,
        "current": c.current or None,  # null, not "": one way to say "nothing to show"
        "desired": c.desired or None,
        "hint": hint_line(c, invocation) or None,
        "detail": _one_line(c.detail) or None,
        "fix": fix,
    }


COLOURS = {Status.PASS: "32", Status.WARN: "33", Status.FAIL: "31", Status.SKIP: "2"}  # green, yellow, red, dim
MIN_VALUE = 12  # CURRENT/DESIRED never narrower than this when fitting
MIN_NOTE = 20


def use_colour(stream: Any) -> bool:
    """Colour on a terminal only; NO_COLOR (https://no-color.org) or TERM=dumb turn it off."""
    return (
        bool(getattr(stream, "isatty", lambda: False)())
        and "NO_COLOR" not in os.environ
        and (os.environ.get("TERM") != "dumb")
    )


def render(checks: list[CheckResult], invocation: list[str], width: Optional[int] = None, colour: bool = False) -> str:
    """The table. ``width`` None (--wide, or not a terminal): one line per check, nothing cut, the hint last —
    greppable. A width (a terminal): CURRENT/DESIRED and the note cut to fit, and a fix command on its own line
    under its check, never cut (a cut command could not be pasted)."""
    rows = [["STATUS", "CHECK", "CURRENT", "DESIRED", "HINT" if width is None else "NOTE"]]
    fixes: list[str] = [""]
    for c in checks:
        command = fix_command(c, invocation)
        if width is None:
            note = hint_line(c, invocation) or (f"# {_one_line(c.detail)}" if c.detail else "")
            fixes.append("")
        else:
            note = _one_line(c.detail if command is not None else (c.hint or c.detail))
            fixes.append(hint_line(c, invocation) if command is not None else "")
        rows.append([c.status.upper(), c.id, _show(c.current), _show(c.desired), note])
    if width is not None:
        # What STATUS and CHECK need, and room for a note; CURRENT and DESIRED share the rest by their needs.
        avail = width - (max(len(r[0]) for r in rows) + max(len(r[1]) for r in rows) + 4 * 2) - MIN_NOTE
        need = [max(len(r[i]) for r in rows) for i in (2, 3)]
        if sum(need) > avail:
            # Each gets up to half; what one does not need goes to the other.
            half = max(MIN_VALUE, avail // 2)
            cur_w = min(need[0], max(half, avail - min(need[1], half)))
            des_w = max(MIN_VALUE, min(need[1], avail - cur_w))
            for r in rows[1:]:
                r[2], r[3] = _cut(r[2], cur_w), _cut(r[3], des_w)
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for r, fix in zip(rows, fixes):
        head = "  ".join(r[i].ljust(widths[i]) for i in range(4))
        note = r[4] if width is None else _cut(r[4], max(0, width - len(head) - 2))
        line = f"{head}  {note}".rstrip()
        if colour and r[0].lower() in COLOURS:
            line = f"\x1b[{COLOURS[Status(r[0].lower())]}m{r[0]}\x1b[0m{line[len(r[0]) :]}"
        lines.append(line)
        if fix:
            lines.append(f"    {fix}")
    counts = summary(checks)
    lines.append("")
    lines.append(", ".join(f"{counts[s.value]} {s}" for s in Status))
    return "\n".join(lines)


def _show(value: Optional[str]) -> str:
    return "-" if value is None else " ".join(value.split())  # the kernel separates sysctl triples with tabs


def _cut(value: str, width: int) -> str:
    return value if len(value) <= width else value[: max(width - 1, 0)] + "…"
