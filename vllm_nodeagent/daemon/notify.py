"""sd_notify for ``Type=notify``: READY/STATUS/STOPPING/RELOADING/EXTEND_TIMEOUT_USEC and the watchdog.

Built on the ``sdnotify`` package. Without ``NOTIFY_SOCKET`` (not started by systemd) every call is a no-op.
The watchdog is armed only when systemd set ``WATCHDOG_USEC`` for this very process (``WATCHDOG_PID``
matches or is unset); pings are sent from the daemon's main loop, so a hung loop stops pinging.
"""

from __future__ import annotations

import os
import time
from typing import Any, Optional

from vllm_nodeagent import log


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as RELOADING=1 wants it next to MONOTONIC_USEC=."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    def __init__(self, environ: Optional[dict[str, str]] = None) -> None:
        env = os.environ if environ is None else environ
        self.socket_path = env.get("NOTIFY_SOCKET", "")
        self._sd: Any = None
        if self.socket_path:
            import socket

            import sdnotify

            self._sd = sdnotify.SystemdNotifier()  # connects to $NOTIFY_SOCKET; we connect to ours
            if self._sd.socket is not None:
                self._sd.socket.close()
            addr = "\0" + self.socket_path[1:] if self.socket_path.startswith("@") else self.socket_path
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            try:
                sock.connect(addr)
                self._sd.socket = sock
            except OSError as exc:
                sock.close()
                log.get().warning("notify_socket_unusable", socket=self.socket_path, error=str(exc))
                self._sd = None
        self.watchdog_interval_s = 0.0
        usec = env.get("WATCHDOG_USEC", "")
        wd_pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not wd_pid or wd_pid == str(os.getpid())):
            self.watchdog_interval_s = int(usec) / 1e6 / 2
        self._last_status = ""

    @property
    def enabled(self) -> bool:
        return self._sd is not None

    def send(self, *lines: str) -> None:
        if self._sd is not None:
            self._sd.notify("\n".join(lines))

    def ready(self, status: str = "") -> None:
        self.send("READY=1", *([f"STATUS={status}"] if status else []))
        if status:
            self._last_status = status

    def status(self, text: str) -> None:
        if text != self._last_status:
            self._last_status = text
            self.send(f"STATUS={text}")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping")

    def reloading(self) -> None:
        self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}", "STATUS=reloading configuration")

    def extend_timeout(self, seconds: float) -> None:
        self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")
