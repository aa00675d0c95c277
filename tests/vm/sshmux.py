"""One ssh connection held open to a guest (OpenSSH connection sharing); the bed's ssh and scp calls run as
sessions over it.

A fresh connection costs ~1.9 s under TCG on 2 loaded cores (key exchange and authentication in the guest), a
session over the master ~0.15 s (measured against the bed's guests), and the bed makes hundreds of calls: every
poll of a bounded wait is one. Best effort: without a live master (before boot, during a reboot, or if it failed
or died) each call makes its own connection, as before.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional


def end_process(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """TERM, then KILL if it is still there after ``timeout``: qemu and the ssh master end the same way."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


class Master:
    def __init__(self) -> None:
        # A short private directory: a unix socket's path has ~100 bytes at most, and the workdir may be long.
        self._dir = Path(tempfile.mkdtemp(prefix="vmssh-"))
        self.path = self._dir / "ctl"
        self._proc: Optional[subprocess.Popen[bytes]] = None

    def options(self) -> tuple[str, ...]:
        """For every client: the master's socket while the master runs (never become one), else nothing."""
        if self._proc is None or self._proc.poll() is not None:
            return ()
        return ("-o", "ControlMaster=no", "-o", f"ControlPath={self.path}")

    def start(self, ssh_argv: list[str], destination: str) -> bool:
        """Start the master (``ssh_argv``: ssh with the key, port and options, no command); True once its socket
        is there."""
        self.stop()
        self._proc = subprocess.Popen(
            [*ssh_argv, "-o", "ControlMaster=yes", "-o", f"ControlPath={self.path}", "-N", destination],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self._proc.poll() is None:
            if self.path.is_socket():
                return True
            time.sleep(0.2)
        self.stop()
        return False

    def stop(self) -> None:
        if self._proc is not None:
            end_process(self._proc)
            self._proc = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)
