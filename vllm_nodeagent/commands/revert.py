"""`vllm-nodeagent revert`: restore every journaled original the agent wrote (no config needed), print each.

``--dry-run`` says what revert would do and changes nothing; ``--forget ID...`` drops entries (one revert reports
``unrestorable``: an unknown family, a path gone) from the journal without restoring them.
"""

from __future__ import annotations

import argparse
import sys

from vllm_nodeagent.commands.apply import need_root, print_outcomes, tell_wait
from vllm_nodeagent.context import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Context
from vllm_nodeagent.settings.engine import FAILURES, Outcome
from vllm_nodeagent.settings.journal import Journal
from vllm_nodeagent.settings.restore import FORGOTTEN, revert


def cmd_revert(ctx: Context, args: argparse.Namespace) -> int:
    if args.forget:
        return _forget(ctx, args)
    if not args.dry_run:
        need_root(ctx, "revert")
    nvml, _ = ctx.open_nvml()
    journal = Journal(ctx.host, ctx.config.agent.state_dir)
    try:
        if args.dry_run:  # read-only: no lock to wait for (the journal is replaced whole, never torn)
            outcomes = revert(ctx.host, journal, nvml, log_results=False, dry_run=True)
        else:
            with journal.locked(on_wait=tell_wait):
                outcomes = revert(ctx.host, journal, nvml, log_results=False)
    finally:
        if nvml is not None:
            nvml.close()
    if not outcomes and not args.json:
        print("nothing to revert: the journal is empty")
    print_outcomes(outcomes, args.json, "revert", args.dry_run)
    return EXIT_FAILED if any(o.status in FAILURES for o in outcomes) else EXIT_OK


def _forget(ctx: Context, args: argparse.Namespace) -> int:
    need_root(ctx, "revert --forget")
    journal = Journal(ctx.host, ctx.config.agent.state_dir)
    with journal.locked(on_wait=tell_wait):
        entries = journal.entries()
        missing = [i for i in args.forget if i not in entries]
        if missing:
            print(
                f"vllm-nodeagent: revert --forget: {missing[0]!r} is not in the journal {journal.path}; nothing "
                "dropped (the ids: vllm-nodeagent journal show)",
                file=sys.stderr,
            )
            return EXIT_USAGE
        dropped, kept_at = journal.forget(args.forget)
    print_outcomes(
        [
            Outcome(e.id, FORGOTTEN, None, e.original, f"dropped, not restored; its line is kept in {kept_at}")
            for e in dropped
        ],
        args.json,
        "revert",
    )
    return EXIT_OK
