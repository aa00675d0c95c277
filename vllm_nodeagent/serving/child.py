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
from vllm_nodeagent.serving.reaper import POLL_S, Interrupted, Reaper, never
from vllm_nodeagent.serving.state import StateFileError, read_pid, remove_state_file, write_pid_file

Clock = Callable[[], float]
PR_SET_PDEATHSIG = 1  # linux/prctl.h
EXIT_ORPHANED = 126


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
            preexec_fn=parent_death_signal(os.getpid()),  # noqa: PLW1509 - prctl only: see parent_death_signal
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
        """The leader's exit, once; the rest of its group may still run: ``finish`` ends it."""
        rc = self.proc.poll()
        if rc is None:
            return None
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1
        return Exit(self.pid, rc)

    def imports_done(self) -> bool:
        return imports_done(self.pid)

    def reaper(self) -> Reaper:
        return Reaper(self.pid, self.plan.uid if self.plan.switch_user else os.geteuid())

    def finish(self, timeout_s: float, interrupted: Interrupted = never) -> list[int]:
        """After the leader exited (a crash): every process of its group, and what it left in the agent's
        cgroup, gets the same TERM → wait → KILL as a stop; then the pid file goes. Returns the pids ended."""
        found = self.reaper().end(timeout_s, interrupted, why=f"the leader (pid {self.pid}) exited")
        self._cleanup()
        return found

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

    def stop(self, timeout_s: float, interrupted: Interrupted = never) -> Exit:
        """SIGTERM the whole group, wait ``timeout_s`` (or until ``interrupted``: a second SIGTERM), SIGKILL the
        group; then the stragglers (group and cgroup) get the same end. Returns the leader's exit."""
        logger = log.get()
        logger.info("vllm_stopping", pid=self.pid, timeout_s=timeout_s)
        reaper = self.reaper()
        reaper.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        rc = self.proc.poll()
        while rc is None and time.monotonic() < deadline and not interrupted():
            time.sleep(POLL_S)
            rc = self.proc.poll()
        if rc is None:
            logger.warning("vllm_stop_timeout", pid=self.pid, action="SIGKILL to the process group")
            reaper.signal(signal.SIGKILL)
            rc = self.proc.wait()
        # Stragglers (workers that ignored SIGTERM after the leader left) get the same end.
        reaper.end(max(0.0, min(deadline - time.monotonic(), 5.0)), interrupted, why="after the leader stopped")
        self._cleanup()
        ex = Exit(self.pid, rc)
        logger.info("vllm_stopped", pid=self.pid, result=ex.describe())
        return ex


def imports_done(pid: int) -> bool:
    """vLLM's API server ``pid`` has finished importing: it started a process that runs its own interpreter (the
    engine core, forked or spawned: vLLM does that right after its imports and argument parsing). Helpers it
    runs while importing (ldconfig, gcc, nvidia-smi) run other binaries and do not count."""
    procfs = Procfs()
    try:
        own = procfs.exe_key(pid)
        for child in procfs.children(pid):
            try:
                if procfs.exe_key(child) == own:
                    return True
            except ProcError:
                continue
    except ProcError:
        return False
    return False


def parent_death_signal(parent: int) -> Callable[[], None]:
    """The child's last step before exec (after the switch to the vLLM user, which would clear it): ask the
    kernel for SIGTERM when the agent dies (prctl PR_SET_PDEATHSIG), and end at once when it already has.

    Safe beside the agent's threads: prctl is resolved here, before the fork; the function the child runs calls
    only that foreign function and getppid (no import, no lock, no allocation of the agent's objects). SIGTERM,
    not SIGKILL: vLLM's API server then stops its engine and workers itself; what it leaves, a restarted agent
    ends through the pid file (reaper.reclaim). The kernel sends it when the *thread* that forked exits: the
    agent starts vLLM from its main thread only."""
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    getppid = os.getppid
    exit_now = os._exit

    def in_child() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if getppid() != parent:  # the agent died between fork and prctl: nobody would signal us
            exit_now(EXIT_ORPHANED)

    return in_child


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``. Zombies do not count: a reaper that is not
    systemd (containers) may leave them around, and they hold no resources."""
    return Procfs().group_members(pgid)
