"""The vLLM child: start (own session, dropped privileges, inherited stdout/stderr), health, stop, backoff.

Nothing here blocks for long or sleeps: the daemon's loop asks ``poll()``/``healthy()`` when it wakes and
waits on ``wait_fd()`` (a pidfd on Linux ≥ 5.3) for the child's exit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Callable, Optional

from vllm_nodeagent import log
from vllm_nodeagent.host.proc import ProcError, Procfs
from vllm_nodeagent.serving.plan import LaunchPlan
from vllm_nodeagent.serving.state import StateFileError, read_pid, remove_state_file, write_pid_file

Clock = Callable[[], float]


class Backoff:
    """Restart delays: initial, doubling per consecutive crash, capped; reset after a long healthy run."""

    def __init__(self, initial_s: float, max_s: float, healthy_reset_s: float) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.healthy_reset_s = healthy_reset_s
        self.failures = 0

    def next_delay(self) -> float:
        """Record one crash; the delay before the next start."""
        self.failures += 1
        return float(min(self.initial_s * (2 ** (self.failures - 1)), self.max_s))

    def healthy_for(self, seconds: float) -> None:
        if seconds >= self.healthy_reset_s and self.failures:
            log.get().info("vllm_backoff_reset", healthy_s=round(seconds, 1), after_failures=self.failures)
            self.failures = 0


@dataclass
class Exit:
    pid: int
    returncode: int

    def describe(self) -> str:
        if self.returncode < 0:
            try:
                return f"killed by {signal.Signals(-self.returncode).name}"
            except ValueError:
                return f"killed by signal {-self.returncode}"
        return f"exit status {self.returncode}"


def health_ok(url: str, timeout: float = 1.0) -> bool:
    """True when ``url`` answers 200. vLLM refuses connections for its whole model load."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - http(s) URL from root's config
            return int(resp.status) == 200
    except urllib.error.HTTPError:
        return False
    except (urllib.error.URLError, OSError, ValueError):
        return False


class Child:
    """One running vLLM process group."""

    def __init__(self, launch_plan: LaunchPlan, pid_file: str = "", clock: Clock = time.monotonic) -> None:
        self.plan = launch_plan
        self.pid_file = pid_file
        self.clock = clock
        kwargs: dict[str, object] = {}
        if launch_plan.switch_user:
            # numactl runs first (it is argv[0]), then execs vLLM: both as the user, the binding is inherited.
            kwargs = {"user": launch_plan.uid, "group": launch_plan.gid, "extra_groups": launch_plan.groups}
        self.proc = subprocess.Popen(  # stdout/stderr inherited: vLLM's own lines go to the journal unchanged
            launch_plan.argv,
            env=launch_plan.env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
            cwd="/",
            **kwargs,  # type: ignore[call-overload]
        )
        self.pid: int = self.proc.pid
        self.started_at = clock()
        self.healthy_since: Optional[float] = None
        self._pidfd = -1
        if hasattr(os, "pidfd_open"):
            try:
                self._pidfd = os.pidfd_open(self.pid)
            except OSError:
                self._pidfd = -1
        try:
            self.start_time = Procfs().stat(self.pid).start_time  # with the pid: this process and no later one
        except ProcError:
            self.start_time = 0
        if pid_file:
            try:
                write_pid_file(pid_file, self.pid)
            except OSError as exc:
                log.get().warning("pid_file_write_failed", path=pid_file, error=str(exc))

    def wait_fd(self) -> int:
        """A file descriptor that becomes readable when the child exits (-1: poll instead)."""
        return self._pidfd

    def poll(self) -> Optional[Exit]:
        rc = self.proc.poll()
        if rc is None:
            return None
        self._cleanup()
        return Exit(self.pid, rc)

    def _cleanup(self) -> None:
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1
        if self.pid_file:
            try:
                mine = read_pid(self.pid_file) == self.pid
            except StateFileError:
                mine = False
            if mine:
                remove_state_file(self.pid_file)

    def signal_group(self, sig: int) -> bool:
        try:
            os.killpg(self.pid, sig)
            return True
        except ProcessLookupError:
            return False
        except PermissionError as exc:
            log.get().error("vllm_signal_failed", pid=self.pid, signal=signal.Signals(sig).name, error=str(exc))
            return False

    def stop(self, timeout_s: float) -> Exit:
        """SIGTERM the whole group, wait ``timeout_s``, SIGKILL the group. Returns the leader's exit."""
        logger = log.get()
        logger.info("vllm_stopping", pid=self.pid, timeout_s=timeout_s)
        self.signal_group(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning("vllm_stop_timeout", pid=self.pid, action="SIGKILL to the process group")
            self.signal_group(signal.SIGKILL)
            rc = self.proc.wait()
        # Stragglers of the group (workers that ignored SIGTERM after the leader left) get the same end.
        deadline = time.monotonic() + min(timeout_s, 5.0)
        while _group_alive(self.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _group_alive(self.pid):
            self.signal_group(signal.SIGKILL)
        self._cleanup()
        ex = Exit(self.pid, rc)
        logger.info("vllm_stopped", pid=self.pid, result=ex.describe())
        return ex


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``. Zombies do not count: a reaper that is not
    systemd (containers) may leave them around, and they hold no resources."""
    return Procfs().group_members(pgid)


def _group_alive(pgid: int) -> bool:
    return bool(group_members(pgid))
