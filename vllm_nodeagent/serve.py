"""`vllm-nodeagent serve` and `launch`: the serving side's commands.

``serve`` is the main process of ``vllm-nodeagent-serve.service`` (the "split" layout).

Runs as the ``vllm`` user in its own hardened unit (systemd/vllm-nodeagent-serve.service): plan → prewarm →
vLLM under the NUMA binding → READY=1 only once vLLM passes the readiness gate → watchdog pings and health
checks until SIGTERM. It is the daemon's serving half (``Daemon`` with settings off), with one difference:
after READY, a vLLM that exits or fails its health checks is stopped and this process exits non-zero, so that
systemd restarts the unit (``Restart=on-failure``, its start limit) and owns the cgroup: no backoff in here,
and ``systemctl is-active`` means "serving". The root unit (``run``) does host work only in this layout.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from vllm_nodeagent import log
from vllm_nodeagent.daemon.loop import Daemon
from vllm_nodeagent.launcher import PID_FILE, LaunchError, build_plan, something_to_launch

if TYPE_CHECKING:
    from vllm_nodeagent.context import Context

EXIT_VLLM_FAILED = 1  # systemd's Restart=on-failure restarts the unit
SERVE_UNIT_USER = "vllm"  # systemd/vllm-nodeagent-serve.service's User=


class ServeDaemon(Daemon):
    """The daemon's loop without settings, metrics file or restart backoff (systemd owns restarts)."""

    def __init__(self, ctx: Context, **kwargs: Any) -> None:
        super().__init__(ctx, manage_settings=False, prewarm=True, launch_vllm=True, **kwargs)

    def _textfile(self, path: str) -> str:
        """The metrics file is the root unit's: this unit cannot (and must not) write under /var/lib."""
        return ""

    def _pid_file(self) -> str:
        runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
        return os.path.join(runtime, PID_FILE) if runtime else super()._pid_file()

    def _schedule_restart(self, now: float, why: str, pid: int = 0) -> None:
        """vLLM is gone (exited, unhealthy, failed to restart): exit for systemd to restart this unit."""
        if self.child is not None:  # defensive: every caller has already stopped it
            self.child.stop(self.vcfg.stop_timeout_s)
            self.child = None
        self.phase = "stopping"
        self.log.error("vllm_exited", pid=pid, result=why, action="exit; systemd restarts the serve unit")
        self.notify.status(f"vLLM failed ({why}); exiting for systemd to restart the unit")
        self.exit_code = EXIT_VLLM_FAILED


def _preload() -> None:
    """Import now what the loop imports lazily: a package upgrade replaces the venv under a running serve unit."""
    import psutil  # noqa: F401

    from vllm_nodeagent import nvml, prewarm  # noqa: F401


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
    return ServeDaemon(ctx, gpus_override=args.gpus).run()


def cmd_launch(ctx: Context, args: argparse.Namespace) -> int:
    """`vllm-nodeagent launch`: the serving side in the foreground (hosts without systemd, debugging)."""
    from vllm_nodeagent.context import EXIT_FAILED, EXIT_OK, EXIT_USAGE, print_json
    from vllm_nodeagent.topology import discover_with_nvml

    # A one-shot command's errors are one plain line on stderr (the daemon logs its own as events).
    if not something_to_launch(ctx.config.vllm):
        print(f"vllm-nodeagent: launch: nothing to launch: set [vllm] model in {ctx.config.path}", file=sys.stderr)
        return EXIT_USAGE
    topo = discover_with_nvml(ctx)
    if args.dry_run:
        try:
            launch_plan, _ = build_plan(ctx, topo, args.gpus, prepare=False)  # a dry run creates nothing
        except LaunchError as exc:
            print(f"vllm-nodeagent: launch: {' '.join(str(exc).split())}", file=sys.stderr)
            return EXIT_FAILED
        if args.json:
            print_json({"argv": launch_plan.argv, "env": launch_plan.env, "numa_nodes": launch_plan.numa_nodes,
                        "cpus": launch_plan.cpus, "gpus": launch_plan.gpus, "binding": launch_plan.binding,
                        "user": launch_plan.user, "notes": launch_plan.notes})
        else:
            print(" ".join(launch_plan.argv))
            for k, v in sorted(launch_plan.env.items()):
                print(f"  {k}={v}")
            for note in launch_plan.notes:
                print(f"note: {note}")
        return EXIT_OK
    daemon = Daemon(ctx, manage_settings=False, prewarm=False, gpus_override=args.gpus, topology=topo)
    rc = daemon.run()
    if rc != EXIT_OK and daemon.failure:
        print(f"vllm-nodeagent: launch: {' '.join(daemon.failure.split())}", file=sys.stderr)
    return rc
