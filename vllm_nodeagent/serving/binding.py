"""The live binding of vLLM's processes, read from /proc (the daemon's check after start, and doctor's), and
what differs from the plan.
"""

from __future__ import annotations

from typing import Any, Optional

from vllm_nodeagent.host.parse import format_cpulist, parse_cpulist
from vllm_nodeagent.host.proc import ProcError, Procfs
from vllm_nodeagent.serving.plan import LaunchPlan


def mempolicy_of(numa_maps: str) -> str:
    """The process's dominant memory policy as /proc/<pid>/numa_maps shows it ("bind:0", "default", ...)."""
    counts: dict[str, int] = {}
    for line in numa_maps.splitlines():
        parts = line.split(None, 2)
        if len(parts) >= 2:
            counts[parts[1]] = counts.get(parts[1], 0) + 1
    return max(counts, key=lambda k: counts[k]) if counts else ""


def process_binding(procfs: Procfs, pid: int) -> dict[str, Any]:
    """Raises ProcError (gone, not readable)."""
    status = procfs.status(pid)
    return {
        "pid": pid,
        "cpus": status.get("Cpus_allowed_list", ""),
        "mems": status.get("Mems_allowed_list", ""),
        "mempolicy": mempolicy_of(procfs.numa_maps(pid)),
    }


def live_binding(pid: int, procfs: Optional[Procfs] = None) -> list[dict[str, Any]]:
    """Binding of ``pid`` and every descendant (vLLM's API server, engine core, workers). ``procfs``: the real
    /proc by default (the daemon's own children); doctor passes the one of ``--root``."""
    fs = procfs or Procfs()
    if not fs.exists(pid):
        return []
    out: list[dict[str, Any]] = []
    for p in [pid, *fs.descendants(pid)]:
        try:
            out.append(process_binding(fs, p))
        except ProcError:
            continue  # exited meanwhile
    return out


def binding_mismatches(launch_plan: LaunchPlan, procs: list[dict[str, Any]]) -> list[str]:
    """What differs from the plan (empty = every process is bound as planned)."""
    if launch_plan.binding not in ("numactl", "numactl+pin"):
        return []
    want_cpus = set(launch_plan.cpus)
    problems: list[str] = []
    for p in procs:
        cpus = set(parse_cpulist(p["cpus"])) if p["cpus"] else set()
        if cpus and not cpus <= want_cpus:
            problems.append(f"pid {p['pid']}: CPUs {p['cpus']}, planned {format_cpulist(sorted(want_cpus))}")
        if p["mempolicy"] and p["mempolicy"] != launch_plan.mempolicy:
            problems.append(f"pid {p['pid']}: memory policy {p['mempolicy']}, planned {launch_plan.mempolicy}")
    return problems
