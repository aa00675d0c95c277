"""Ending vLLM's processes: the whole process group and what it left in the agent's own cgroup, TERM → wait →
KILL, the same for a stop, after a crash of the leader and for a vLLM a killed agent left behind.

vLLM's API server starts EngineCore processes, which start the workers; they share the leader's process group
(the agent starts the leader in a session of its own). When the leader dies, the others live on (PPID 1) holding
GPU memory: ``Reaper.end`` stops them before a restart. A process that left the group (setsid) but stayed in the
agent's cgroup — one of the agent's own units (``host.proc.own_cgroup``) — and runs as the (non-root) vLLM user
is stopped too. Signals to those strays go through a pidfd opened before the uid check, so a pid reused between
the check and the signal is never hit.

Every wait polls ``interrupted`` (a SIGTERM/SIGINT for the daemon): then the TERM grace ends at once and KILL
follows.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Callable, Optional

from vllm_nodeagent import log
from vllm_nodeagent.host.proc import ProcError, Procfs, own_cgroup

POLL_S = 0.05
KILL_WAIT_S = 5.0  # after SIGKILL: the kernel frees a process in well under a second; D state can take longer

Interrupted = Callable[[], bool]


def never() -> bool:
    return False


class Reaper:
    """The processes of one vLLM: group ``pgid``, and cgroup stragglers that run as ``uid``."""

    def __init__(self, pgid: int, uid: int, procfs: Optional[Procfs] = None, cgroup: Optional[str] = None) -> None:
        self.pgid = pgid
        self.uid = uid
        self.procfs = procfs or Procfs()
        self.cgroup = own_cgroup(self.procfs) if cgroup is None else cgroup

    def group(self) -> list[int]:
        return self.procfs.group_members(self.pgid)

    def strays(self) -> list[int]:
        """Processes in the agent's own cgroup, outside the group, not the agent or its direct children (the
        argument probe), running as the vLLM user."""
        if not self.cgroup or self.uid == 0:  # vLLM as root: "runs as the vLLM user" would mean any root process
            return []
        me = os.getpid()
        table = self.procfs.table()
        found = []
        for pid in self.procfs.cgroup_procs(self.cgroup):
            st = table.get(pid)
            if st is None or not st.alive or me in (pid, st.ppid) or st.pgid == self.pgid:
                continue
            try:
                if self.procfs.uid(pid) == self.uid:
                    found.append(pid)
            except ProcError:
                continue
        return found

    def alive(self) -> list[int]:
        return sorted({*self.group(), *self.strays()})

    def signal(self, sig: int) -> None:
        try:
            os.killpg(self.pgid, sig)
        except ProcessLookupError:
            pass
        except PermissionError as exc:
            log.get().error("vllm_signal_failed", pgid=self.pgid, signal=signal.Signals(sig).name, error=str(exc))
        for pid in self.strays():
            self._signal_stray(pid, sig)

    def _signal_stray(self, pid: int, sig: int) -> None:
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return  # gone
        try:
            if self.procfs.uid(pid) != self.uid:  # checked after the pidfd is open: the same process
                return
            signal.pidfd_send_signal(fd, sig)
            log.get().info("vllm_stray_signalled", pid=pid, signal=signal.Signals(sig).name, cgroup=self.cgroup)
        except (ProcError, OSError):
            return
        finally:
            os.close(fd)

    def wait_gone(self, timeout_s: float, interrupted: Interrupted = never) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.alive():
            if time.monotonic() >= deadline or interrupted():
                return False
            time.sleep(POLL_S)
        return True

    def end(self, timeout_s: float, interrupted: Interrupted = never, why: str = "") -> list[int]:
        """TERM every process, wait up to ``timeout_s`` (less when interrupted), KILL what is left. Returns the
        pids that were found alive at the start (empty: nothing to do)."""
        found = self.alive()
        if not found:
            return []
        logger = log.get()
        logger.warning("vllm_leftovers", pgid=self.pgid, pids=found, why=why, action="SIGTERM, then SIGKILL")
        self.signal(signal.SIGTERM)
        if not self.wait_gone(timeout_s, interrupted):
            left = self.alive()
            logger.warning("vllm_leftovers_kill", pgid=self.pgid, pids=left)
            self.signal(signal.SIGKILL)
            if not self.wait_gone(KILL_WAIT_S):
                logger.error("vllm_leftovers_survive", pgid=self.pgid, pids=self.alive())
        return found


def reclaim(pid_file: str, timeout_s: float, interrupted: Interrupted = never) -> list[int]:
    """End a vLLM that an earlier, killed agent left (its pid file and plan are still there), before a new one
    starts on its port and GPUs. Only what the plan identifies: the leader when alive must have the recorded start
    time and uid; every member of its process group (which outlives the leader) must run as the recorded uid.
    Returns the pids ended; the pid and plan files are removed once nothing of that vLLM is left."""
    from vllm_nodeagent.serving.state import StateFileError, identify, read_pid, read_plan_file, remove_state_file

    logger = log.get()
    state_dir = os.path.dirname(pid_file)
    try:
        pid = read_pid(pid_file)
        plan = read_plan_file(state_dir, pid) if pid is not None else None
    except StateFileError as exc:
        logger.warning("vllm_pid_file_refused", detail=str(exc), action="nothing reclaimed")
        return []
    if pid is None or plan is None:
        return []
    procfs = Procfs()
    uid = int(plan["uid"])
    if procfs.exists(pid):
        why = identify(procfs, pid, plan, uid)
        if why:
            logger.info("vllm_pid_file_stale", pid=pid, detail=why)
            remove_state_file(pid_file)
            return []
    reaper = Reaper(pid, uid, procfs)
    others = []
    for member in reaper.group():
        try:
            if procfs.uid(member) != uid:
                others.append(member)
        except ProcError:
            continue
    if others:
        logger.warning("vllm_reclaim_refused", pgid=pid, pids=others, detail=f"not all run as uid {uid}")
        return []
    found = reaper.end(timeout_s, interrupted, why="left by an earlier agent (pid file)")
    if found:
        logger.warning("vllm_reclaimed", pgid=pid, pids=found)
    remove_state_file(pid_file)
    return found
