"""One daemon per state dir: ``run`` and ``launch`` hold an flock on ``<state_dir>/daemon.lock`` for their whole
life. Two daemons on one state dir would both enforce, write the metrics and the pid file, and revert on stop.
A second one says who holds the lock (the kernel's record) and exits 3 (EXIT_HOST)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from vllm_nodeagent.host.lock import LockHeld, hold

if TYPE_CHECKING:
    from vllm_nodeagent.context import Context

LOCK_FILE = "daemon.lock"


class DaemonLockError(Exception):
    """One line: the lock is held (by whom) or cannot be taken."""


def hold_daemon_lock(ctx: Context) -> int:
    """The fd of the held lock (closed by the process's end: the kernel releases it even after kill -9)."""
    state = ctx.host.path(ctx.config.agent.state_dir)
    path = str(state / LOCK_FILE)
    try:
        state.mkdir(parents=True, exist_ok=True, mode=0o755)
        return hold(path)
    except LockHeld as exc:
        raise DaemonLockError(f"another daemon runs on {ctx.config.agent.state_dir}: {exc}") from None
    except OSError as exc:
        raise DaemonLockError(f"cannot lock {path}: {exc.strerror or exc}") from None


def release(fd: int) -> None:
    os.close(fd)
