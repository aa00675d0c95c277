"""What every readiness check receives (``Probe``) and the shared, cached host reads they use.

Checks are read-only. Every /sys, /proc, /dev and /etc path goes through the host seam, so a fake tree under
``--root`` answers exactly like a real host. Accounts come from /etc/passwd and /etc/group under the root (the
service user is never impersonated: write access is judged from uid/gid and mode bits).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional

from vllm_nodeagent.checks.status import Status
from vllm_nodeagent.host import Host, HostError
from vllm_nodeagent.host.accounts import Account, Accounts
from vllm_nodeagent.host.proc import Procfs

if TYPE_CHECKING:
    from vllm_nodeagent.config import Config
    from vllm_nodeagent.context import Context
    from vllm_nodeagent.nvml import Nvml
    from vllm_nodeagent.serving.state import Running
    from vllm_nodeagent.topology import Gpu, Topology

SpaceFn = Callable[[str], Optional[tuple[int, int]]]


@dataclass(frozen=True)
class Fix:
    """What fixes a check, for doctor's ``fix`` object and its pasteable hint line.

    ``args``: an agent command (``apply --only ID``): doctor puts the binary as invoked and the global options
    (``--root``, ``--config``) in front, so the pasted line acts on the same tree and config. ``argv``: another
    program's full command line (a systemd unit owns the setting). ``note``: prose, one line."""

    args: tuple[str, ...] = ()
    argv: tuple[str, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class CheckResult:
    """One line of doctor's report, from a readiness check here or from doctor's setting/host/vLLM checks."""

    id: str
    status: Status
    current: Optional[str] = None
    desired: Optional[str] = None
    hint: str = ""  # what to do about it
    detail: str = ""  # why it has this status
    fix: Optional[Fix] = None  # a command that fixes it; None: ``hint`` is advice for a person

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status.value}


@dataclass(frozen=True)
class Registered:
    """A room's entry in doctor's one registry (checks/registry.py): the ids its results carry and what makes them.

    ``ids``: each a check id, or ``PREFIX.*`` for ids named at run time (``sysctl.*`` from the config,
    ``vllm.args.*`` from vLLM's flags); ``doctor --only`` is checked against them and runs only the entries an id
    selects. ``run``: read-only, from a ``Probe``."""

    ids: tuple[str, ...]
    run: Callable[[Probe], list[CheckResult]]

    def selected_by(self, want: str) -> bool:
        """``want`` (an id or a dotted prefix, as ``--only`` takes) can select a result of this entry."""
        want = want.rstrip(".")
        for i in self.ids:
            if i.endswith(".*"):
                family = i[:-2]
                if want == family or want.startswith(family + ".") or family.startswith(want + "."):
                    return True
            elif i == want or i.startswith(want + "."):
                return True
        return False


@dataclass
class Probe:
    """The host, the config and what discovery found; caches reads several checks share."""

    host: Host
    config: Config
    topo: Topology
    nvml: Optional[Nvml] = None
    space_fn: Optional[SpaceFn] = None  # tests replace statvfs: a fake tree cannot fake a filesystem's size
    sleep: Callable[[float], None] = time.sleep  # between samples of a short window (tests: no real wait)
    nvml_why: str = ""  # why NVML is None (discovery's words)
    ctx: Optional[Context] = None  # the command's context: doctor's own checks (settings, vLLM) need it
    _comms: Optional[dict[int, str]] = field(default=None, repr=False)
    _running: Optional[Running] = field(default=None, repr=False)

    def context(self) -> Context:
        """The command's context (doctor gives it; the daemon's readiness probe runs only checks that need none)."""
        if self.ctx is None:
            raise LookupError("this check needs the command's context (doctor's), not the daemon's readiness probe")
        return self.ctx

    def processes(self) -> dict[int, str]:
        """pid -> comm of every process (one /proc scan per doctor run)."""
        if self._comms is None:
            self._comms = Procfs(self.host).comms()
        return self._comms

    def running(self, comm: str) -> Optional[int]:
        """The pid of a process named ``comm`` (the kernel truncates comm to 15 characters)."""
        want = comm[:15]
        return next((pid for pid, c in sorted(self.processes().items()) if c == want), None)

    def account(self, name: str) -> Optional[Account]:
        """The user from --root's /etc/passwd and /etc/group (host/accounts); None when unknown or unreadable."""
        try:
            return Accounts.of(self.host).member(name)
        except HostError:
            return None

    def account_unknown(self, name: str) -> str:
        """Why ``account(name)`` is None, naming the file (the tree's under --root): for the check's line."""
        accounts = Accounts.of(self.host)
        try:
            accounts.users()
        except HostError as exc:
            return str(exc)
        return accounts.unknown(name)

    def vllm_pid(self) -> Optional[int]:
        """The live vLLM pid from its pid file (None when vLLM is not running, or the file or the process is not
        trusted: ``vllm_running().problem`` says why): the root agent's state dir (single layout) or the serve
        unit's runtime dir (split layout)."""
        return self.vllm_running().pid

    def vllm_running(self) -> Running:
        if self._running is None:
            from vllm_nodeagent.serving.layout import SERVE_RUNTIME_DIR
            from vllm_nodeagent.serving.state import find_running

            dirs = [str(self.host.path(d)) for d in (self.config.agent.state_dir, SERVE_RUNTIME_DIR)]
            acct = self.account(self.config.vllm.user) if self.config.vllm is not None else None
            self._running = find_running(dirs, acct.uid if acct else None, Procfs(self.host))
        return self._running

    def space(self, host_path: str) -> Optional[tuple[int, int]]:
        """(size, free for unprivileged users) in bytes of the filesystem holding ``host_path``; None = absent."""
        if self.space_fn is not None:
            return self.space_fn(host_path)
        try:
            st = os.statvfs(self.host.path(host_path))
        except OSError:
            return None
        return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize

    def vllm_env(self, key: str) -> Optional[str]:
        cfg = self.config.vllm
        return cfg.env.get(key) if cfg is not None else None


def planned_gpus(probe: Probe) -> list[Gpu]:
    """The GPUs vLLM will use: ``[vllm] gpus`` (indices) or all of them."""
    want = probe.config.vllm.gpus if probe.config.vllm is not None else []
    return [g for g in probe.topo.gpus if not want or g.index in want]


def descendants(probe: Probe, root: int) -> set[int]:
    """``root`` and every process below it."""
    return {root, *Procfs(probe.host).descendants(root)}
