"""`vllm-nodeagent serve`: the main process of ``vllm-nodeagent-serve.service`` (the "split" layout).

Runs as the ``vllm`` user in its own hardened unit (systemd/vllm-nodeagent-serve.service): plan → prewarm →
vLLM under the NUMA binding → READY=1 only once vLLM passes the readiness gate → watchdog pings and health
checks until SIGTERM. It is the daemon loop over the serve keeper alone (no host keeper), with one difference:
after READY, a vLLM that exits or fails its health checks is stopped and this process exits non-zero, so that
systemd restarts the unit (``Restart=on-failure``, its start limit) and owns the cgroup: no backoff in here,
and ``systemctl is-active`` means "serving". The root unit (``run``) does host work only in this layout.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from vllm_nodeagent import log
from vllm_nodeagent.daemon.loop import Loop
from vllm_nodeagent.daemon.serve_keeper import ServeKeeper
from vllm_nodeagent.serving.plan import something_to_launch

if TYPE_CHECKING:
    from vllm_nodeagent.context import Context

SERVE_UNIT_USER = "vllm"  # systemd/vllm-nodeagent-serve.service's User=


def _preload() -> None:
    """Import now what the loop imports lazily: a package upgrade replaces the venv under a running serve unit."""
    from vllm_nodeagent import nvml  # noqa: F401
    from vllm_nodeagent.host import proc  # noqa: F401
    from vllm_nodeagent.prewarm import warm  # noqa: F401


def cmd_serve(ctx: Context, args: argparse.Namespace) -> int:
    from vllm_nodeagent.context import EXIT_FAILED, EXIT_OK
    from vllm_nodeagent.daemon.notify import Notifier

    configured = something_to_launch(ctx.config.vllm)
    if args.configured:
        # For the package's upgrade migration: would the serve unit (User=vllm) serve what `run` served?
        user = ctx.config.vllm.user if ctx.config.vllm else ""
        return EXIT_OK if configured and user == SERVE_UNIT_USER else EXIT_FAILED
    if not configured:
        # READY then a clean exit: the unit ends "inactive", not failed, and is not restarted.
        log.get().warning("nothing_to_serve", detail="[vllm] model is empty and command is the default")
        Notifier().ready("nothing to serve: [vllm] model is empty")
        return EXIT_OK
    _preload()
    # The metrics file is the root unit's (this unit cannot write under /var/lib); vllm.pid and the plan go to
    # $RUNTIME_DIRECTORY, where doctor looks for them in this layout.
    loop = Loop(ctx, export_metrics=False)
    runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    loop.add(ServeKeeper(loop, gpus=args.gpus, exit_on_failure=True, pid_dir=runtime))
    return loop.run()
