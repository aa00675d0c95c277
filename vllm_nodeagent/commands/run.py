"""`vllm-nodeagent run`: the root unit (Type=notify). The daemon loop over the host keeper, and in the "single"
layout the serve keeper too; in the "split" layout vLLM has its own unit (``serve``): host work only, no prewarm."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from vllm_nodeagent import log
from vllm_nodeagent.daemon.host_keeper import HostKeeper
from vllm_nodeagent.daemon.loop import Loop
from vllm_nodeagent.daemon.serve_keeper import ServeKeeper
from vllm_nodeagent.daemon.serve_unit_watch import ServeUnitWatch
from vllm_nodeagent.daemon.single import DaemonLockError, hold_daemon_lock, release

if TYPE_CHECKING:
    from vllm_nodeagent.context import Context


def cmd_run(ctx: Context, args: argparse.Namespace) -> int:
    from vllm_nodeagent.context import EXIT_HOST

    try:
        lock = hold_daemon_lock(ctx)
    except DaemonLockError as exc:
        log.get().error("daemon_lock_held", error=str(exc))
        print(f"vllm-nodeagent: run: {exc}", file=sys.stderr)
        return EXIT_HOST
    try:
        return _run(ctx, args)
    finally:
        release(lock)


def _run(ctx: Context, args: argparse.Namespace) -> int:
    from vllm_nodeagent.serving.layout import detect

    layout = detect(ctx.host, getattr(args, "layout", "auto"))
    log.get().info("layout", layout=layout.name, reason=layout.reason)
    loop = Loop(ctx)
    loop.add(HostKeeper(loop))
    if layout.split:
        loop.add(ServeUnitWatch(loop))  # vllm_up/restarts in the textfile from systemd's record of the serve unit
    else:
        loop.add(ServeKeeper(loop))
    return loop.run()
