"""`vllm-nodeagent revert`: restore every journaled original the agent wrote (no config needed), print each."""

from __future__ import annotations

import argparse

from vllm_nodeagent.commands.apply import need_root, print_outcomes, tell_wait
from vllm_nodeagent.context import EXIT_FAILED, EXIT_OK, Context
from vllm_nodeagent.settings.engine import FAILURES, revert
from vllm_nodeagent.settings.journal import Journal


def cmd_revert(ctx: Context, args: argparse.Namespace) -> int:
    need_root(ctx, "revert")
    nvml, _ = ctx.open_nvml()
    journal = Journal(ctx.host, ctx.config.agent.state_dir)
    try:
        with journal.locked(on_wait=tell_wait):
            outcomes = revert(ctx.host, journal, nvml, log_results=False)
    finally:
        if nvml is not None:
            nvml.close()
    if not outcomes and not args.json:
        print("nothing to revert: the journal is empty")
    print_outcomes(outcomes, args.json)
    return EXIT_FAILED if any(o.status in FAILURES for o in outcomes) else EXIT_OK
