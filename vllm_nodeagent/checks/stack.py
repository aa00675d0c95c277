"""Check 7: the driver/CUDA stack vLLM's wheel will meet.

The driver's CUDA version (NVML) must be at least the CUDA the installed torch wheel was built for: an older
driver fails at the first CUDA call (error 35/803/804). The wheel's CUDA is read from torch/version.py in the
vLLM environment as text (never imported, never run as root). Also: nouveau must not hold the GPUs, the
nvidia_uvm module and /dev/nvidia-uvm must be there and usable by the service user (CUDA needs unified memory),
and the loader cache should hold one libcuda.so.1 (two drivers' libraries = whichever comes first wins).
"""

from __future__ import annotations

import os
import re
import stat
from typing import Optional

from vllm_nodeagent.checks.base import CheckResult, Probe, Registered
from vllm_nodeagent.checks.status import Status
from vllm_nodeagent.host import HostError
from vllm_nodeagent.host import paths as host_paths
from vllm_nodeagent.nvml import NvmlCallError

_TORCH_CUDA = re.compile(r"^cuda\s*(?::[^=\n]*)?=\s*['\"](\d+)\.(\d+)", re.M)
_LIBCUDA = re.compile(rb"(/[\x21-\x7e]*/libcuda\.so\.1)\x00")
LD_CACHE = "/etc/ld.so.cache"
UVM = "/dev/nvidia-uvm"


def parse_modules(text: str) -> set[str]:
    """Module names loaded, from /proc/modules."""
    return {line.split()[0] for line in text.splitlines() if line.strip()}


def parse_torch_cuda(text: str) -> Optional[tuple[int, int]]:
    m = _TORCH_CUDA.search(text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def libcuda_paths(data: bytes) -> list[str]:
    """Distinct libcuda.so.1 paths in an ld.so.cache (its string table holds each entry's full path)."""
    return sorted({m.group(1).decode("ascii", "replace") for m in _LIBCUDA.finditer(data)})


def venv_python(probe: Probe) -> Optional[str]:
    """The interpreter that will run vLLM: ``[vllm] python``, else derived like the argument probe does."""
    cfg = probe.config.vllm
    if cfg is None:
        return None
    if cfg.python:
        return cfg.python
    if not probe.host.is_real:
        cmd0 = cfg.command[0] if cfg.command else ""
        return cmd0 if cmd0.startswith("/") else None
    from vllm_nodeagent.serving.args import resolve_python

    interp, _why = resolve_python(cfg.command, cfg.python)
    return interp or None


def wheel_cuda(probe: Probe) -> tuple[Optional[tuple[int, int]], str]:
    """(CUDA major.minor torch was built for, where it was read) — (None, why) when unknown."""
    py = venv_python(probe)
    if not py:
        return None, "no vLLM interpreter known ([vllm] python)"
    env_root = os.path.dirname(os.path.dirname(py))
    for lib in probe.host.glob(f"{env_root}/lib", "python3*"):
        path = f"{lib}/site-packages/torch/version.py"
        text = probe.host.read_or(path)
        if text is not None:
            found = parse_torch_cuda(text)
            return found, path if found else f"{path}: a CPU build of torch"
    return None, f"no torch under {env_root}/lib"


def cuda_check(probe: Probe) -> CheckResult:
    cid = "stack.cuda_version"
    if probe.nvml is None:
        return CheckResult(cid, Status.SKIP, None, None, "", "NVML unavailable")
    try:
        raw = int(probe.nvml.system_get("nvmlSystemGetCudaDriverVersion"))
    except NvmlCallError as exc:
        return CheckResult(cid, Status.SKIP, None, None, "", str(exc))
    drv = (raw // 1000, raw % 1000 // 10)
    wheel, where = wheel_cuda(probe)
    current = f"driver CUDA {drv[0]}.{drv[1]}"
    if wheel is None:
        return CheckResult(cid, Status.SKIP, current, None, "", where)
    current += f", torch built for CUDA {wheel[0]}.{wheel[1]}"
    want = "driver CUDA >= the wheel's"
    if drv[0] < wheel[0]:
        return CheckResult(
            cid,
            Status.FAIL,
            current,
            want,
            "upgrade the NVIDIA driver or install a wheel built for this CUDA",
            f"{where}: CUDA fails at init (error 35/803/804)",
        )
    if drv < wheel:
        return CheckResult(
            cid,
            Status.WARN,
            current,
            want,
            "upgrade the driver to the wheel's CUDA minor",
            "minor-version compatibility: runs, but kernels needing newer PTX JIT fail",
        )
    return CheckResult(cid, Status.PASS, current, want, "", where)


def modules_checks(probe: Probe) -> list[CheckResult]:
    text = probe.host.read_or("/proc/modules")
    if text is None:
        return [CheckResult("stack.modules", Status.SKIP, None, None, "", "/proc/modules unreadable")]
    mods = parse_modules(text)
    out = []
    if "nouveau" in mods:
        out.append(
            CheckResult(
                "stack.nouveau",
                Status.FAIL,
                "nouveau loaded",
                "nouveau absent",
                "blacklist nouveau (modprobe.d), update the initramfs, reboot",
                "nouveau holds the GPUs: the NVIDIA driver cannot bind",
            )
        )
    else:
        out.append(CheckResult("stack.nouveau", Status.PASS, "not loaded", "nouveau absent"))
    uvm_loaded = "nvidia_uvm" in mods
    node = probe.host.path(UVM)
    try:
        st: Optional[os.stat_result] = host_paths.file_stat(node)
    except OSError:
        st = None
    problems = []
    if not uvm_loaded:
        problems.append("nvidia_uvm not loaded")
    if st is None or not stat.S_ISCHR(st.st_mode):
        problems.append(f"{UVM} missing")
    elif probe.config.vllm is not None:
        acct = probe.account(probe.config.vllm.user)
        if acct is not None and acct.uid != 0:
            shift = 6 if st.st_uid == acct.uid else 3 if st.st_gid in acct.groups else 0
            if (st.st_mode >> shift) & 6 != 6:
                problems.append(f"{UVM} mode {stat.S_IMODE(st.st_mode):o} denies {acct.name}")
    current = "; ".join(problems) or f"loaded, {UVM} present"
    out.append(
        CheckResult(
            "stack.nvidia_uvm",
            Status.FAIL if problems else Status.PASS,
            current,
            "loaded, device usable",
            "modprobe nvidia-uvm && nvidia-modprobe -u -c=0 (or install nvidia-modprobe)" if problems else "",
            "CUDA needs unified memory: cuInit fails without it" if problems else "",
        )
    )
    return out


def libcuda_check(probe: Probe) -> CheckResult:
    cid = "stack.libcuda"
    try:
        data = host_paths.read_capped(probe.host.path(LD_CACHE), 64 << 20)
    except OSError:
        return CheckResult(cid, Status.SKIP, None, "one libcuda.so.1", "", f"{LD_CACHE} unreadable")
    paths = libcuda_paths(data)
    if len(paths) == 1:
        return CheckResult(cid, Status.PASS, paths[0], "one libcuda.so.1")
    if not paths:
        return CheckResult(
            cid,
            Status.FAIL,
            "none",
            "one libcuda.so.1",
            "install the driver's libraries, then ldconfig",
            "CUDA cannot find the driver library",
        )
    builds = {libcuda_build(probe, p) for p in paths}
    if len(builds) == 1 and "" not in builds:
        # Seen on the lent H100: /lib and /usr/local/nvidia/lib64 both hold 580.159.04's library. Copies of one
        # build are harmless, whichever comes first.
        return CheckResult(
            cid,
            Status.PASS,
            f"{len(paths)} copies of libcuda.so.{builds.pop()}",
            "one libcuda build",
            detail=", ".join(paths),
        )
    found = ", ".join(f"{p} ({libcuda_build(probe, p) or 'build unknown'})" for p in paths)
    return CheckResult(
        cid,
        Status.WARN,
        found,
        "one libcuda build",
        "remove the stale copy (cuda-compat or an old driver) and run ldconfig",
        "the first in the cache wins: it may not match the loaded kernel module",
    )


def libcuda_build(probe: Probe, path: str) -> str:
    """The driver build a libcuda.so.1 link names (libcuda.so.580.159.04 -> "580.159.04"); "" when unknown."""
    try:
        name = os.path.basename(probe.host.realpath(path))
    except (OSError, HostError):  # a link loop: the build is unknown
        return ""
    prefix = "libcuda.so."
    build = name[len(prefix) :] if name.startswith(prefix) else ""
    return "" if build in ("", "1") else build


def checks(probe: Probe) -> list[CheckResult]:
    if not probe.topo.gpus:
        return []
    return [cuda_check(probe), *modules_checks(probe), libcuda_check(probe)]


CHECKS = Registered(
    ("stack.cuda_version", "stack.modules", "stack.nouveau", "stack.nvidia_uvm", "stack.libcuda"), checks
)
