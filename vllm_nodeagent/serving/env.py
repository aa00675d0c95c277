"""Who vLLM runs as and the environment it gets: the one place both the argument probe and the launch use,
so ``doctor`` and ``launch`` ask vLLM the same question in the same environment.

vLLM, torch and triton write compile caches at start (torch.compile's inductor cache defaults to
``/tmp/torchinductor_<user>``, triton's to ``~/.triton``, vLLM's to ``~/.cache/vllm``). A root-owned leftover
there, or a home the user cannot write (``nobody``: ``/nonexistent``), stops a real vLLM at start. So the agent
keeps one cache directory per user under ``[agent] cache_dir`` (created through the host seam, owned by the
user, mode 0700) and points those variables at it unless the operator set them.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from dataclasses import dataclass
from typing import Optional

from vllm_nodeagent.config import VllmConfig
from vllm_nodeagent.host import Host, HostError
from vllm_nodeagent.host.accounts import Accounts

SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_PASS_ENV_PREFIXES = ("CUDA_", "NCCL_")
_PASS_ENV = ("HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "LANG", "LC_ALL", "TZ")
# Compile caches vLLM's stack writes at start (subdirectories of the agent's per-user cache directory).
CACHE_VARS = {"TORCHINDUCTOR_CACHE_DIR": "torchinductor", "TRITON_CACHE_DIR": "triton", "VLLM_CACHE_ROOT": "vllm"}


class LaunchError(Exception):
    """The vLLM command cannot be built or started; the message says what to fix."""

    host_fault = False  # a host or state fault (a refused directory): exit 3, not 1


class LaunchHostFault(LaunchError):
    """A directory or file the launch needs was refused (host/fsafe) or unusable: exit 3 (README)."""

    host_fault = True


@dataclass(frozen=True)
class RunAs:
    name: str
    uid: int
    gid: int
    groups: list[int]
    home: str
    switch: bool  # False when the agent already runs as this user


def resolve_user(name: str, host: Host) -> RunAs:
    """The account vLLM runs as, from the host's /etc/passwd and /etc/group (``--root``'s only under a root, even
    when the tree has none; never NSS). Root only when written explicitly; switching needs the agent to be root."""
    accounts = Accounts.of(host)
    try:
        pw = accounts.user(name)
    except HostError as exc:
        raise LaunchError(f"[vllm] user {name!r}: cannot read the accounts: {exc}") from None
    if pw is None:
        raise LaunchError(
            f"[vllm] user {name!r} does not exist: {accounts.unknown(name)}"
            f" (the package creates 'vllm'; or: {accounts.add_hint(name)})"
        ) from None
    euid = os.geteuid()
    if pw.uid == 0 and name != "root":
        raise LaunchError(f'[vllm] user {name!r} has uid 0; write user = "root" if you really mean root')
    if euid == pw.uid:
        return RunAs(name, pw.uid, pw.gid, os.getgroups(), pw.home, switch=False)
    if euid != 0:
        raise LaunchError(f"cannot run vLLM as {name!r}: the agent runs as uid {euid}, not root")
    return RunAs(name, pw.uid, pw.gid, accounts.group_ids(pw), pw.home, switch=True)


def program_path(cfg: VllmConfig, run_as: RunAs) -> Optional[str]:
    """Where ``[vllm] command``'s program is found on the PATH the child gets (child_env), or None."""
    if not cfg.command:
        return None
    return shutil.which(cfg.command[0], path=child_env(cfg, run_as, [], {}).get("PATH", SAFE_PATH))


def program_missing(cfg: VllmConfig, run_as: RunAs) -> Optional[OSError]:
    """Why a start cannot exec ``[vllm] command``'s program, as the exec would say it (``vllm: No such file or
    directory``), or None: a name is looked up on the PATH the child gets (child_env), as exec (or numactl's) does.
    The start itself would fail the same way; asked before anything runs beside it, the fault is said once."""
    if not cfg.command or program_path(cfg, run_as) is not None:
        return None
    program = cfg.command[0]
    there = "/" in program and os.path.lexists(program)
    code = errno.EACCES if there else errno.ENOENT
    return OSError(code, os.strerror(code), program)


def popen_user_kwargs(run_as: Optional[RunAs]) -> dict[str, object]:
    """subprocess arguments that drop to ``run_as`` in the child (setgroups, setgid, setuid before exec)."""
    if run_as is None or not run_as.switch:
        return {}
    return {"user": run_as.uid, "group": run_as.gid, "extra_groups": list(run_as.groups)}


def home_usable(run_as: RunAs) -> bool:
    """The user's home is a directory the user owns (``nobody``'s /nonexistent, or a root-owned one, is not)."""
    try:
        st = Host("/").stat(run_as.home)
    except HostError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == run_as.uid and bool(st.st_mode & stat.S_IWUSR)


def cache_dir_for(host: Host, base: str, run_as: RunAs) -> str:
    """Where ``run_as``'s caches live (the real path, as the child sees it); nothing is created."""
    return str(host.path(base) / run_as.name)


def prepare_cache_dir(host: Host, base: str, run_as: RunAs) -> str:
    """Create ``base/<user>`` owned by the user (mode 0700) and return its real path.

    The base must be root's and writable by nobody else (not 1777, not the vLLM user's: either could swap the
    leaf for a link); the leaf is created and fixed by fd only (host/fsafe), a link or non-directory refused."""
    leaf = f"{base.rstrip('/')}/{run_as.name}"
    uid, gid = (run_as.uid, run_as.gid) if run_as.switch else (-1, -1)
    try:
        host.ensure_dir(leaf, 0o700, uid, gid, what="vLLM cache dir")
    except HostError as exc:
        raise LaunchHostFault(f"cannot prepare vLLM's cache directory: {exc} ([agent] cache_dir = {base!r})") from None
    return cache_dir_for(host, base, run_as)


def child_env(
    cfg: VllmConfig,
    run_as: RunAs,
    gpus: list[int],
    source: Optional[dict[str, str]] = None,
    cache_dir: str = "",
) -> dict[str, str]:
    """A clean environment: what vLLM needs, nothing of the agent's (no NOTIFY_SOCKET, no root's HOME).
    With ``cache_dir``: the compile caches go there, and so does HOME when the user's own is unusable.
    ``[vllm] env`` (and CUDA_*/NCCL_*/HF_* passed through from the agent's environment) win."""
    src = os.environ if source is None else source
    env: dict[str, str] = {"PATH": SAFE_PATH, "HOME": run_as.home, "USER": run_as.name, "LOGNAME": run_as.name}
    for key, value in src.items():
        if key.startswith(_PASS_ENV_PREFIXES) or key in _PASS_ENV:
            env[key] = value
    env.setdefault("LANG", "C.UTF-8")
    command0 = cfg.command[0] if cfg.command else ""
    if command0.startswith("/"):
        # A venv's bin directory first, so `vllm` finds its own helpers (e.g. ninja, triton's compilers).
        env["PATH"] = f"{os.path.dirname(command0)}:{SAFE_PATH}"
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in gpus)
    # Without it CUDA numbers GPUs fastest-first and the indices (PCI bus order) would name other GPUs.
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    if cache_dir:
        if not home_usable(run_as):
            env["HOME"] = cache_dir
            env["XDG_CACHE_HOME"] = os.path.join(cache_dir, ".cache")
        for var, sub in CACHE_VARS.items():
            env.setdefault(var, os.path.join(cache_dir, sub))
    env.update(cfg.env)
    return env
