"""`vllm-nodeagent journal show`: what apply wrote, when, and whether each still holds. Read-only: no lock, no
write (the journal is replaced whole, so a read never meets a torn one)."""

from __future__ import annotations

import argparse

from vllm_nodeagent.context import EXIT_FAILED, EXIT_OK, Context, print_json
from vllm_nodeagent.settings.engine import UNTOUCHED, show
from vllm_nodeagent.settings.journal import Journal
from vllm_nodeagent.settings.restore import CHANGED_SINCE, GONE, Standing, iso_time, standing


def cmd_journal(ctx: Context, args: argparse.Namespace) -> int:
    journal = Journal(ctx.host, ctx.config.agent.state_dir)
    entries = journal.entries()
    nvml, _ = ctx.open_nvml()
    try:
        rows = [standing(e, ctx.host, nvml) for e in entries.values()]
    finally:
        if nvml is not None:
            nvml.close()
    if args.json:
        print_json({"journal": journal.path, "entries": [r.to_json() for r in rows], "problems": journal.problems})
    else:
        if not rows and not journal.problems:
            print(f"the journal is empty ({journal.path}): nothing applied to revert")
        for problem in journal.problems:
            print(f"{'damaged':<10}  {problem}")
        for r in rows:
            print(render_standing(r))
    return EXIT_FAILED if journal.problems else EXIT_OK


def render_standing(r: Standing) -> str:
    """``holds  sysctl.vm.max_map_count  65530 → 262144  written 2026-12-02 06:03:11Z``"""
    e = r.entry
    if r.state == UNTOUCHED:
        value = show(r.live if r.live is not None else e.original)
    else:
        value = f"{show(e.original)} → {show(e.written)}"
        if r.state in (CHANGED_SINCE, GONE) and r.live is not None:
            value += f", now {show(r.live)}"
    at = e.written_at if e.written_at is not None and r.state != UNTOUCHED else e.recorded_at
    when = f"{'recorded' if r.state == UNTOUCHED or e.written_at is None else 'written'} {iso_time(at)}"
    detail = f"({' '.join(r.detail.split())})" if r.detail else ""
    return "  ".join(p for p in (f"{r.state:<10}", e.id, value, when.replace("T", " "), detail) if p)
