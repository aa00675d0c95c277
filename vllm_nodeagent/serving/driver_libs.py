"""Can vLLM's dynamic loader find the NVIDIA driver's libraries in the environment the agent gives it?

The agent starts vLLM (and its argument probe) with a clean environment: the agent's own ``LD_LIBRARY_PATH`` is
not passed on. Where the driver's user-space libraries (``libcuda.so.1``, ``libnvidia-ml.so.1``) live outside the
loader's search path — container-style images that mount the driver at ``/usr/local/nvidia/lib64`` and name it
only in ``LD_LIBRARY_PATH``, as the lent H100 does — vLLM then fails at start (torch finds no CUDA driver) while
the agent, started from that shell, reads NVML fine. The fix is one of: register the directory with the loader
(``/etc/ld.so.conf.d/*.conf`` + ``ldconfig``), or pass it in ``[vllm.env] LD_LIBRARY_PATH``.

The loader's search path is read the way ld.so builds it: ``LD_LIBRARY_PATH``, then the directories of
``/etc/ld.so.conf`` (with its ``include`` globs; ``ldconfig`` caches them), then the trusted defaults. Every file
goes through the host seam (``--root``). Pure apart from those reads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vllm_nodeagent.checks.status import Status

if TYPE_CHECKING:
    from vllm_nodeagent.host import Host

DRIVER_LIBS = ("libcuda.so.1", "libnvidia-ml.so.1")
# glibc's trusted directories (x86-64 and arm64, multiarch and not); ldconfig always scans them too.
DEFAULT_DIRS = (
    "/lib",
    "/usr/lib",
    "/lib64",
    "/usr/lib64",
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
)
_MAX_INCLUDES = 64


def _split_path(value: str) -> list[str]:
    return [d for d in value.replace(";", ":").split(":") if d.startswith("/")]


def ld_so_conf_dirs(host: Host, conf: str = "/etc/ld.so.conf") -> list[str]:
    """Directories named by ``conf`` and the files it includes (glob patterns, relative to /etc), in order."""
    dirs: list[str] = []
    seen: set[str] = set()
    pending = [conf]
    while pending and len(seen) < _MAX_INCLUDES:
        path = pending.pop(0)
        if path in seen:
            continue
        seen.add(path)
        text = host.read_or(path, "") or ""
        for raw in text.splitlines():
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            if line.startswith("include"):
                for pattern in line.split()[1:]:
                    pattern = pattern if pattern.startswith("/") else os.path.join(os.path.dirname(path), pattern)
                    parent, name = os.path.split(pattern)
                    pending += sorted(host.glob(parent, name))
            elif line.startswith("hwcap"):
                continue
            else:
                for d in line.replace(",", " ").split():
                    d = d.split("=", 1)[0]  # old "dir=TYPE" syntax
                    if d.startswith("/") and d not in dirs:
                        dirs.append(d)
    return dirs


@dataclass(frozen=True)
class Found:
    lib: str
    directory: str  # "" = not found
    via: str  # "LD_LIBRARY_PATH" | "ld.so.conf" | "default" | ""


def find(host: Host, lib: str, ld_library_path: str, conf_dirs: list[str]) -> Found:
    """Where the loader would find ``lib`` for a process with ``ld_library_path``."""
    for via, dirs in (
        ("LD_LIBRARY_PATH", _split_path(ld_library_path)),
        ("ld.so.conf", conf_dirs),
        ("default", list(DEFAULT_DIRS)),
    ):
        for d in dirs:
            if host.exists(f"{d.rstrip('/')}/{lib}"):
                return Found(lib, d, via)
    return Found(lib, "", "")


@dataclass(frozen=True)
class Verdict:
    status: Status  # pass, fail or warn
    current: str
    hint: str


def check(host: Host, vllm_env: Mapping[str, str], agent_env: Mapping[str, str]) -> Verdict:
    """Whether vLLM, started with ``vllm_env`` (the agent's clean environment + ``[vllm.env]``), loads the driver's
    libraries; ``agent_env`` (the agent's own environment) is only used to name the fix."""
    conf = ld_so_conf_dirs(host)
    child = [find(host, lib, vllm_env.get("LD_LIBRARY_PATH", ""), conf) for lib in DRIVER_LIBS]
    missing = [f.lib for f in child if not f.directory]
    current = ", ".join(f"{f.lib}: {f.directory} ({f.via})" if f.directory else f"{f.lib}: not found" for f in child)
    if not missing:
        return Verdict(Status.PASS, current, "")
    agent = [find(host, lib, agent_env.get("LD_LIBRARY_PATH", ""), conf) for lib in missing]
    where = sorted({f.directory for f in agent if f.directory})
    if where:
        dirs = ":".join(where)
        return Verdict(
            Status.FAIL,
            current,
            (
                f"{', '.join(missing)} only in {dirs}, which only the agent's own LD_LIBRARY_PATH names: vLLM starts "
                f'with a clean environment. Add LD_LIBRARY_PATH = "{dirs}" to [vllm.env], or register it with the '
                f"loader: echo {where[0]} > /etc/ld.so.conf.d/nvidia-driver.conf && ldconfig"
            ),
        )
    return Verdict(
        Status.WARN,
        current,
        (
            f"{', '.join(missing)} not found on the loader path (LD_LIBRARY_PATH of [vllm.env], /etc/ld.so.conf, "
            f"{DEFAULT_DIRS[1]}, ...): is the NVIDIA driver installed? If it lives elsewhere, name its directory in "
            "/etc/ld.so.conf.d/ (then ldconfig) or in [vllm.env] LD_LIBRARY_PATH"
        ),
    )


__all__ = ["DEFAULT_DIRS", "DRIVER_LIBS", "Found", "Verdict", "check", "find", "ld_so_conf_dirs"]
