"""`vllm-nodeagent reload`: the units' ExecReload=. SIGHUP to the daemon, then wait until it says the reload is
over (daemon/reload_ack.py), so ``systemctl reload`` returns when the new config is in force — or fails, naming
the config error, while the daemon keeps serving with the old one."""

from __future__ import annotations

import argparse
import os
import select
import signal
import sys
from typing import TYPE_CHECKING

from vllm_nodeagent.daemon.notify import monotonic_usec
from vllm_nodeagent.daemon.reload_ack import ack_path, read_ack

if TYPE_CHECKING:
    from vllm_nodeagent.context import Context

POLL_S = 0.1  # the ack is a file; the daemon's exit wakes the wait at once (pidfd)


def main_pid(args: argparse.Namespace) -> int:
    """PID from the command line, else systemd's $MAINPID (set for ExecReload= commands); 0 when neither."""
    text = str(args.pid) if args.pid is not None else os.environ.get("MAINPID", "")
    return int(text) if text.isdigit() and int(text) > 1 else 0


def cmd_reload(ctx: Context, args: argparse.Namespace) -> int:
    from vllm_nodeagent.context import EXIT_FAILED, EXIT_OK, EXIT_USAGE

    pid = main_pid(args)
    if not pid:
        print(
            "vllm-nodeagent: reload: no daemon pid (give PID, or run as ExecReload=, where systemd sets $MAINPID); "
            "by hand: systemctl reload vllm-nodeagent",
            file=sys.stderr,
        )
        return EXIT_USAGE
    path = ack_path()
    try:
        pidfd = os.pidfd_open(pid)  # the same process for the signal and the wait, even if its pid is reused
    except ProcessLookupError:
        print(f"vllm-nodeagent: reload: no process {pid}", file=sys.stderr)
        return EXIT_FAILED
    try:
        sent = monotonic_usec()
        signal.pidfd_send_signal(pidfd, signal.SIGHUP)
        if not path:
            print(f"sent SIGHUP to {pid}; not waiting for the reload ($RUNTIME_DIRECTORY unset: not run by systemd)")
            return EXIT_OK
        while True:
            ack = read_ack(ctx.host, path)
            if ack is not None and ack.received_usec >= sent:
                if ack.ok:
                    print(f"reloaded: the daemon (pid {pid}) runs the new config")
                    return EXIT_OK
                print(f"vllm-nodeagent: reload: config error: {ack.why}", file=sys.stderr)
                return EXIT_USAGE
            if select.select([pidfd], [], [], POLL_S)[0]:  # readable: the daemon exited
                print(f"vllm-nodeagent: reload: the daemon (pid {pid}) exited during the reload", file=sys.stderr)
                return EXIT_FAILED
    finally:
        os.close(pidfd)
