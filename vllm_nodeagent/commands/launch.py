"""`vllm-nodeagent launch`: the serving side in the foreground (hosts without systemd, debugging)."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import TYPE_CHECKING

from vllm_nodeagent.daemon.loop import Loop
from vllm_nodeagent.daemon.serve_keeper import ServeKeeper
from vllm_nodeagent.daemon.single import DaemonLockError, hold_daemon_lock, release
from vllm_nodeagent.serving.env import LaunchError
from vllm_nodeagent.serving.plan import build_plan, something_to_launch

if TYPE_CHECKING:
    from vllm_nodeagent.context import Context


def cmd_launch(ctx: Context, args: argparse.Namespace) -> int:
    """`vllm-nodeagent launch`: the serving side in the foreground (hosts without systemd, debugging)."""
    from vllm_nodeagent.context import EXIT_FAILED, EXIT_HOST, EXIT_OK, EXIT_USAGE, print_json
    from vllm_nodeagent.host.parse import format_cpulist
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
            print_json(
                {
                    "argv": launch_plan.argv,
                    "env": launch_plan.env,
                    "numa_nodes": launch_plan.numa_nodes,
                    "cpus": format_cpulist(launch_plan.cpus),
                    "cpus_count": len(launch_plan.cpus),
                    "gpus": launch_plan.gpus,
                    "binding": launch_plan.binding,
                    "user": launch_plan.user,
                    "notes": launch_plan.notes,
                },
                "launch",
            )
        else:
            print(shlex.join(launch_plan.argv))  # quoted: a copied command line never splits
            for k, v in sorted(launch_plan.env.items()):
                print(f"  {shlex.quote(f'{k}={v}')}")
            for note in launch_plan.notes:
                print(f"note: {note}")
        return EXIT_OK
    try:
        lock = hold_daemon_lock(ctx)  # launch writes the same pid file as run: one of them per state dir
    except DaemonLockError as exc:
        print(f"vllm-nodeagent: launch: {exc}", file=sys.stderr)
        return EXIT_HOST
    try:
        loop = Loop(ctx, topology=topo)
        loop.prints_failure = True
        loop.add(ServeKeeper(loop, prewarm=False, gpus=args.gpus))
        rc = loop.run()
    finally:
        release(lock)
    if rc != EXIT_OK and loop.failure:
        print(f"vllm-nodeagent: launch: {' '.join(loop.failure.split())}", file=sys.stderr)
    return rc
