"""Check 9: /dev/shm size and free space, and logind's RemoveIPC= against the service user.

vLLM's tensor-parallel message queues and NCCL's intra-node SHM transport live in /dev/shm; a container-sized
/dev/shm (64 MiB) fails at the first collective. logind's RemoveIPC= (default yes) deletes every /dev/shm file
and SysV IPC object of a non-system user when that user's last login session ends — under a running engine.
"""

from __future__ import annotations

import os
from typing import Optional

from vllm_nodeagent.checks.base import CheckResult, Probe, Registered
from vllm_nodeagent.checks.status import Status
from vllm_nodeagent.host.parse import ini_assignments

GIB, MIB = 1 << 30, 1 << 20
SHM_RECOMMENDED = 1 * GIB  # below: warn (vLLM's docs run containers with --ipc=host or a large --shm-size)
SHM_MINIMUM = 256 * MIB  # below: fail (NCCL's SHM transport alone needs tens of MiB per GPU pair)
SHM_FREE_MINIMUM = 512 * MIB
LOGIND_FILES = ("/usr/lib/systemd/logind.conf.d", "/run/systemd/logind.conf.d", "/etc/systemd/logind.conf.d")
DEFAULT_SYS_UID_MAX = 999


def parse_logind_remove_ipc(texts: list[str]) -> Optional[bool]:
    """The effective RemoveIPC= of logind.conf and its drop-ins (given in load order); None = not set."""
    value: Optional[bool] = None
    for key, val in ini_assignments(texts, "Login"):
        if key == "RemoveIPC":
            v = val.lower()
            if v in ("yes", "true", "on", "1"):
                value = True
            elif v in ("no", "false", "off", "0"):
                value = False
    return value


def parse_sys_uid_max(text: str) -> int:
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 2 and f[0] == "SYS_UID_MAX" and f[1].isdigit():
            return int(f[1])
    return DEFAULT_SYS_UID_MAX


def logind_texts(probe: Probe) -> list[str]:
    """logind.conf, then its drop-ins sorted by file name across the three directories (systemd's order)."""
    texts = [probe.host.read_or("/etc/systemd/logind.conf", "") or ""]
    dropins: dict[str, str] = {}
    for d in LOGIND_FILES:  # a later directory's file of the same name masks an earlier one
        for p in probe.host.glob(d, "*.conf"):
            dropins[os.path.basename(p)] = p
    texts += [probe.host.read_or(dropins[n], "") or "" for n in sorted(dropins)]
    return texts


def shm_size_check(space: Optional[tuple[int, int]]) -> CheckResult:
    cid = "shm.size"
    want = f"size >= {SHM_RECOMMENDED // GIB} GiB, free >= {SHM_FREE_MINIMUM // MIB} MiB"
    if space is None:
        return CheckResult(
            cid,
            Status.FAIL,
            "no /dev/shm",
            want,
            "mount a tmpfs on /dev/shm (fstab: tmpfs /dev/shm tmpfs defaults 0 0)",
            "vLLM and NCCL need POSIX shared memory",
        )
    size, free = space
    current = f"size {size // MIB} MiB, free {free // MIB} MiB"
    hint = "mount -o remount,size=16G /dev/shm (and the same size= in fstab); in a container: --ipc=host"
    if size < SHM_MINIMUM:
        return CheckResult(cid, Status.FAIL, current, want, hint, "too small for NCCL's SHM transport")
    if size < SHM_RECOMMENDED:
        return CheckResult(cid, Status.WARN, current, want, hint, "small for tensor-parallel message queues")
    if free < SHM_FREE_MINIMUM:
        return CheckResult(
            cid, Status.WARN, current, want, "remove stale files in /dev/shm (leftovers of killed runs)", "nearly full"
        )
    return CheckResult(cid, Status.PASS, current, want)


def remove_ipc_check(probe: Probe) -> CheckResult:
    cid = "shm.remove_ipc"
    cfg = probe.config.vllm
    if cfg is None:
        return CheckResult(cid, Status.SKIP, None, None, "", "[vllm] is not configured")
    acct = probe.account(cfg.user)
    if acct is None:
        return CheckResult(
            cid,
            Status.SKIP,
            f"user {cfg.user}: {probe.account_unknown(cfg.user)}",
            None,
            "",
            "cannot judge an unknown user",
        )
    remove = parse_logind_remove_ipc(logind_texts(probe))
    effective = True if remove is None else remove
    sys_max = parse_sys_uid_max(probe.host.read_or("/etc/login.defs", "") or "")
    shown = f"RemoveIPC={'yes' if effective else 'no'}{' (default)' if remove is None else ''}"
    current = f"{shown}, {acct.name} uid {acct.uid}"
    want = f"RemoveIPC=no, or a system user (uid <= {sys_max})"
    if not effective or acct.uid <= sys_max:
        return CheckResult(cid, Status.PASS, current, want)
    return CheckResult(
        cid,
        Status.WARN,
        current,
        want,
        "printf '[Login]\\nRemoveIPC=no\\n' > /etc/systemd/logind.conf.d/vllm.conf, or recreate the user "
        "with useradd --system",
        f"logind deletes {acct.name}'s /dev/shm files when its last session ends",
    )


SHM = "/dev/shm"  # noqa: S108 - inspected (statvfs), never written


def checks(probe: Probe) -> list[CheckResult]:
    shm = probe.space(SHM) if probe.host.is_dir(SHM) else None
    return [shm_size_check(shm), remove_ipc_check(probe)]


CHECKS = Registered(("shm.size", "shm.remove_ipc"), checks)
