"""A synchronous ``systemctl reload``: the daemon's answer to a SIGHUP, for ``vllm-nodeagent reload``.

``ExecReload=/bin/kill -HUP $MAINPID`` returns as soon as kill has sent the signal, so systemd ended the reload
job before the daemon had even read the new config: ``systemctl reload`` returned, and the unit turned
"reloading" a moment later (seen in the VM bed on systemd 252; ``Type=notify-reload`` needs systemd 253, newer
than RHEL 9's and Ubuntu 22.04's). ``ExecReload=vllm-nodeagent reload`` sends the SIGHUP and waits for this file
instead: the daemon writes it once the reload is over — the new config taken (and, when vLLM restarted for
it, the new vLLM past the readiness gate) or refused with the old one kept — naming the CLOCK_MONOTONIC time it
took the signal in, so a waiter never mistakes an earlier reload's answer for its own.

The file lives in the unit's ``$RUNTIME_DIRECTORY`` (root's for the host unit, vllm's for the serve unit: the
writer and the waiter run as the same user). One line: ``<usec> ok`` or ``<usec> refused <why>``.
"""

from __future__ import annotations

import errno
import os
from typing import NamedTuple, Optional

from vllm_nodeagent.host import Host, HostError

ACK_FILE = "reload.ack"
_MAX_WHY = 2000  # one line in the journal; a config error names a file, a key and a value


class ReloadAck(NamedTuple):
    received_usec: int  # when the daemon took the SIGHUP in (CLOCK_MONOTONIC, µs)
    ok: bool
    why: str  # "" when ok; the config error when refused


def ack_path(environ: Optional[dict[str, str]] = None) -> str:
    """Where the ack goes: the first ``$RUNTIME_DIRECTORY`` systemd gave the unit; "" outside systemd."""
    env = os.environ if environ is None else environ
    first = env.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return os.path.join(first, ACK_FILE) if first.startswith("/") else ""


def format_ack(ack: ReloadAck) -> str:
    why = " ".join(ack.why.split())[:_MAX_WHY]  # one line whatever the error text holds
    return f"{ack.received_usec} ok\n" if ack.ok else f"{ack.received_usec} refused {why}\n"


def parse_ack(text: str) -> Optional[ReloadAck]:
    """The ack, or None for anything else (a torn or foreign file is no answer: the waiter keeps waiting)."""
    usec, _, rest = text.strip().partition(" ")
    verdict, _, why = rest.partition(" ")
    if not usec.isdigit():
        return None
    if verdict == "ok" and not why:
        return ReloadAck(int(usec), True, "")
    if verdict == "refused":
        return ReloadAck(int(usec), False, why)
    return None


def write_ack(host: Host, path: str, ack: ReloadAck) -> None:
    host.write_file_atomic(path, format_ack(ack).encode(), mode=0o644, what="reload acknowledgement")


def read_ack(host: Host, path: str) -> Optional[ReloadAck]:
    """The daemon's last answer; None while there is none (no file yet, or not an ack). A file the ground floor
    refuses (a link, someone else's) raises: waiting on it would wait for ever."""
    try:
        data = host.read_file(path, what="reload acknowledgement", cap=4096)
    except HostError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise
    return parse_ack(data.decode("utf-8", "replace"))
