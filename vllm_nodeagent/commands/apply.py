"""`vllm-nodeagent apply`: build the configured settings, apply them under the journal lock, print each result."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from vllm_nodeagent import log
from vllm_nodeagent.context import EXIT_FAILED, EXIT_OK, EXIT_PENDING, EXIT_USAGE, Context, print_json
from vllm_nodeagent.settings.engine import (
    CHANGED,
    FAILURES,
    RESTORED,
    UNTOUCHED,
    WOULD_CHANGE,
    Outcome,
    apply,
    selected,
    show,
)
from vllm_nodeagent.settings.families import build_tunables
from vllm_nodeagent.settings.journal import Journal, JournalError
from vllm_nodeagent.settings.restore import FORGOTTEN, UNRESTORABLE, WOULD_RESTORE
from vllm_nodeagent.topology import discover


def cmd_apply(ctx: Context, args: argparse.Namespace) -> int:
    if not args.dry_run:
        need_root(ctx, "apply")
    nvml, why = ctx.open_nvml()  # once: discovery and the GPU settings share the session
    try:
        topo = discover(ctx.host, nvml, why)
        for w in topo.warnings:
            log.get().warning("topology_mismatch", detail=w)
        tunables = selected(build_tunables(ctx.config, topo, ctx.host, nvml, why), args.only)
        if args.only and not tunables:
            print(f"vllm-nodeagent: --only {' '.join(args.only)}: matches no configured setting", file=sys.stderr)
            return EXIT_USAGE
        journal = Journal(ctx.host, ctx.config.agent.state_dir)
        if args.dry_run:
            outcomes = apply(tunables, journal, dry_run=True, log_results=False)
        else:
            with journal.locked(on_wait=tell_wait):
                outcomes = apply(tunables, journal, log_results=False)
    finally:
        if nvml is not None:
            nvml.close()
    print_outcomes(outcomes, args.json, "apply", args.dry_run)
    if any(o.status in FAILURES for o in outcomes):
        return EXIT_FAILED
    # A dry run with something to write: a distinct exit so scripts can tell "pending" from "nothing to do".
    return EXIT_PENDING if any(o.status == WOULD_CHANGE for o in outcomes) else EXIT_OK


def need_root(ctx: Context, command: str) -> None:
    if ctx.host.is_real and os.geteuid() != 0:
        raise JournalError(
            f"{command} changes kernel settings and the journal in {ctx.config.agent.state_dir}: "
            f"run it as root (sudo vllm-nodeagent {command})"
        )


def tell_wait(message: str) -> None:
    print(f"vllm-nodeagent: {message}", file=sys.stderr, flush=True)


def print_outcomes(outcomes: list[Outcome], as_json: bool, kind: str = "apply", dry_run: bool = False) -> None:
    """Each result once on stdout, then one summary line (text), or one JSON document (docs/json.md)."""
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    if as_json:
        print_json({"results": [outcome_json(o) for o in outcomes], "summary": counts, "dry_run": dry_run}, kind)
        return
    for o in outcomes:
        print(render_outcome(o))
    if outcomes:
        print(f"{kind}{' --dry-run' if dry_run else ''}: " + ", ".join(f"{n} {s}" for s, n in counts.items()))


def outcome_json(o: Outcome) -> dict[str, Any]:
    """``current`` is always the live value; a dry run's would-be value is ``would_write``; null = unknown."""
    would = o.status in (WOULD_CHANGE, WOULD_RESTORE)
    return {
        "id": o.id,
        "status": o.status,
        "current": o.previous if would else o.current,
        "desired": o.desired,
        "would_write": o.current if would else None,
        "previous": None if would else o.previous,
        "detail": " ".join(o.message.split()) or None,
    }


def render_outcome(o: Outcome) -> str:
    """``changed  sysctl.vm.max_map_count  65530 → 262144`` — before → after where something moved."""
    if o.status in (CHANGED, WOULD_CHANGE, WOULD_RESTORE) or (o.status == RESTORED and o.previous is not None):
        value = f"{show(o.previous)} → {show(o.current)}"
    elif o.status == RESTORED:
        value = show(o.current)
    elif o.current is None and o.status in (UNRESTORABLE, FORGOTTEN):
        value = f"(original {show(o.desired)})"
    elif o.current is None:
        value = f"(wants {show(o.desired)})" if o.desired is not None and o.status != UNTOUCHED else ""
    else:
        value = show(o.current)
    detail = f"({' '.join(o.message.split())})" if o.message else ""
    return "  ".join(part for part in (f"{o.status:<11}", o.id, value, detail) if part)
