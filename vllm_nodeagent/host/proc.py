"""The one /proc reader (under ``--root``): the process table, trees and groups, status, stat's start time,
cmdline, environ, numa_maps, threads and cgroups.

Every ``/proc/<pid>`` read goes through ``Procfs._read``, the single error translation (psutil's
``wrap_exceptions``): ENOENT/ESRCH — the process is gone, or exited between listing and reading — become
``NoSuchProcess``; EPERM/EACCES (another user's environ, hidepid=) become ``AccessDenied``; anything else is a
``ProcError``. Callers catch these, never OSError. Parsing is pure (host/parse.py).

The daemon's own children are real processes: it reads them with ``Procfs(Host("/"))``; doctor reads the tree
of ``--root`` (a fixture's /proc in tests).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Optional

from vllm_nodeagent.host.files import Host, HostError
from vllm_nodeagent.host.parse import ParseError, parse_proc_stat, parse_status


class ProcError(Exception):
    """A /proc read failed; ``pid`` is the process, the message one line."""

    def __init__(self, pid: int, message: str) -> None:
        self.pid = pid
        super().__init__(message)


class NoSuchProcess(ProcError):
    """The process does not exist (any more)."""


class AccessDenied(ProcError):
    """The process exists but this reader may not look at that file."""


_GONE = (errno.ENOENT, errno.ESRCH)
_DENIED = (errno.EPERM, errno.EACCES)


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/<pid>/stat the agent uses (proc(5)); ``start_time`` in clock ticks since boot."""

    pid: int
    comm: str
    state: str
    ppid: int
    pgid: int
    sid: int
    start_time: int

    @property
    def alive(self) -> bool:
        """Zombies (Z) and dead (X) entries hold no resources: they do not count as running."""
        return self.state not in ("Z", "X")


@dataclass(frozen=True)
class Identity:
    """What tells one process from a later one that got the same pid: its start time, real uid and cmdline."""

    pid: int
    uid: int
    start_time: int
    cmdline: tuple[str, ...]


class Procfs:
    def __init__(self, host: Optional[Host] = None) -> None:
        self.host = host if host is not None else Host("/")

    # -- the one translation ---------------------------------------------------------------------------------
    def _read(self, pid: int, name: str) -> str:
        path = f"/proc/{pid}/{name}"
        try:
            return self.host.read(path)
        except HostError as exc:
            if exc.errno in _GONE:
                raise NoSuchProcess(pid, f"no such process: pid {pid} ({path})") from None
            if exc.errno in _DENIED:
                raise AccessDenied(pid, f"access denied: {path}") from None
            raise ProcError(pid, f"{path}: {exc.strerror}") from None

    # -- one process -----------------------------------------------------------------------------------------
    def exists(self, pid: int) -> bool:
        return pid > 0 and self.host.is_dir(f"/proc/{pid}")

    def stat(self, pid: int) -> ProcStat:
        text = self._read(pid, "stat")
        try:
            f = parse_proc_stat(text)
        except ParseError as exc:
            raise ProcError(pid, f"/proc/{pid}/stat: {exc}") from None
        return ProcStat(pid, f.comm, f.state, f.ppid, f.pgid, f.sid, f.start_time)

    def status(self, pid: int) -> dict[str, str]:
        return parse_status(self._read(pid, "status"))

    def uid(self, pid: int) -> int:
        """The real uid ("Uid:" real effective saved fs)."""
        uids = self.status(pid).get("Uid", "").split()
        if not uids or not uids[0].isdigit():
            raise ProcError(pid, f"/proc/{pid}/status: no Uid line")
        return int(uids[0])

    def comm(self, pid: int) -> str:
        return self._read(pid, "comm").strip()

    def cmdline(self, pid: int) -> list[str]:
        text = self._read(pid, "cmdline")
        return text[:-1].split("\0") if text.endswith("\0") else (text.split("\0") if text else [])

    def environ(self, pid: int) -> dict[str, str]:
        out: dict[str, str] = {}
        for item in self._read(pid, "environ").split("\0"):
            key, sep, value = item.partition("=")
            if sep and key:
                out[key] = value
        return out

    def numa_maps(self, pid: int) -> str:
        return self._read(pid, "numa_maps")

    def cgroup(self, pid: int | str) -> str:
        """The cgroup v2 path ("0::/system.slice/x.service"), "" on a v1-only host."""
        text = self._read(pid, "cgroup") if isinstance(pid, int) else self.host.read_or(f"/proc/{pid}/cgroup", "")
        for line in (text or "").splitlines():
            if line.startswith("0::"):
                return line[3:]
        return ""

    def threads(self, pid: int) -> list[int]:
        tids = [int(t) for t in self.host.listdir(f"/proc/{pid}/task") if t.isdigit()]
        if not tids and not self.exists(pid):
            raise NoSuchProcess(pid, f"no such process: pid {pid}")
        return tids

    def children(self, pid: int) -> list[int]:
        """The direct children of ``pid`` (every thread's /proc/<pid>/task/<tid>/children, proc(5)); [] when gone."""
        found: set[int] = set()
        for tid in self.host.listdir(f"/proc/{pid}/task"):
            text = self.host.read_or(f"/proc/{pid}/task/{tid}/children", "") or ""
            found.update(int(c) for c in text.split() if c.isdigit())
        return sorted(found)

    def exe_key(self, pid: int) -> tuple[int, int]:
        """(device, inode) of the binary ``pid`` runs: a stat through /proc/<pid>/exe, never an open of it."""
        try:
            st = self.host.stat(f"/proc/{pid}/exe")
        except HostError as exc:
            if exc.errno in _GONE:
                raise NoSuchProcess(pid, f"no such process: pid {pid}") from None
            raise ProcError(pid, f"/proc/{pid}/exe: {exc.strerror}") from None
        return (st.st_dev, st.st_ino)

    def identity(self, pid: int) -> Identity:
        st = self.stat(pid)
        uid = self.uid(pid)
        try:
            cmdline = tuple(self.cmdline(pid))
        except ProcError:  # hidepid=, or a recorded fixture without one: the start time and uid still tell
            cmdline = ()
        return Identity(pid, uid, st.start_time, cmdline)

    # -- the table -------------------------------------------------------------------------------------------
    def pids(self) -> list[int]:
        return sorted(int(n) for n in self.host.listdir("/proc") if n.isdigit())

    def table(self) -> dict[int, ProcStat]:
        """Every process's stat; those that exit while the table is read are left out."""
        out: dict[int, ProcStat] = {}
        for pid in self.pids():
            try:
                out[pid] = self.stat(pid)
            except ProcError:
                continue
        return out

    def comms(self) -> dict[int, str]:
        out: dict[int, str] = {}
        for pid in self.pids():
            try:
                out[pid] = self.comm(pid)
            except ProcError:
                continue
        return out

    def descendants(self, root: int, table: Optional[dict[int, ProcStat]] = None) -> list[int]:
        """Every process below ``root`` (children, theirs, ...), not ``root`` itself."""
        rows = self.table() if table is None else table
        children: dict[int, list[int]] = {}
        for st in rows.values():
            children.setdefault(st.ppid, []).append(st.pid)
        found: list[int] = []
        todo = [root]
        while todo:
            for child in children.get(todo.pop(), []):
                if child not in found and child != root:
                    found.append(child)
                    todo.append(child)
        return sorted(found)

    def group_members(self, pgid: int) -> list[int]:
        """Live (non-zombie) processes of process group ``pgid``."""
        return sorted(st.pid for st in self.table().values() if st.pgid == pgid and st.alive)

    def cgroup_procs(self, cgroup: str) -> list[int]:
        """The pids in cgroup v2 ``cgroup`` (its cgroup.procs under /sys/fs/cgroup); [] when unreadable."""
        text = self.host.read_or(f"/sys/fs/cgroup{cgroup.rstrip('/')}/cgroup.procs", "") or ""
        return sorted(int(p) for p in text.split() if p.isdigit())

    def flock_holders(self, major: int, minor: int, inode: int) -> list[int]:
        """Pids holding a FLOCK on the file (device major:minor, inode), from /proc/locks (proc(5))."""
        want = f"{major:02x}:{minor:02x}:{inode}"
        out = []
        for line in (self.host.read_or("/proc/locks", "") or "").splitlines():
            f = line.split()
            # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"; blocked waiters are "1: -> FLOCK ..."
            if len(f) >= 6 and f[1] == "FLOCK" and f[5] == want and f[4].isdigit():
                out.append(int(f[4]))
        return sorted(set(out))


def own_cgroup(procfs: Procfs) -> str:
    """The agent's cgroup v2 path when it is one of the agent's own units ("vllm-nodeagent*.service"), else "":
    another service's cgroup (a CI runner's, cron's), a login session's scope or the root cgroup holds processes
    that are not vLLM's."""
    path = procfs.cgroup("self")
    leaf = path.rstrip("/").rsplit("/", 1)[-1]
    return path if leaf.startswith("vllm-nodeagent") and leaf.endswith(".service") else ""
