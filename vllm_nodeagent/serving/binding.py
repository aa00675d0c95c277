"""The live binding of vLLM's processes, read from /proc (the daemon's check after start, and doctor's), and
what differs from the plan.
"""

from __future__ import annotations

from typing import Any

from vllm_nodeagent.host.parse import format_cpulist, parse_cpulist
from vllm_nodeagent.serving.plan import LaunchPlan


def _status_field(pid: int, key: str) -> str:
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
        for line in fh:
            name, _, value = line.partition(":")
            if name == key:
                return value.strip()
    return ""


def mempolicy_of(pid: int) -> str:
    """The process's dominant memory policy as /proc/<pid>/numa_maps shows it ("bind:0", "default", ...)."""
    counts: dict[str, int] = {}
    with open(f"/proc/{pid}/numa_maps", encoding="ascii", errors="replace") as fh:
        for line in fh:
            parts = line.split(None, 2)
            if len(parts) >= 2:
                counts[parts[1]] = counts.get(parts[1], 0) + 1
    return max(counts, key=lambda k: counts[k]) if counts else ""


def process_binding(pid: int) -> dict[str, Any]:
    return {
        "pid": pid,
        "cpus": _status_field(pid, "Cpus_allowed_list"),
        "mems": _status_field(pid, "Mems_allowed_list"),
        "mempolicy": mempolicy_of(pid),
    }


def live_binding(pid: int) -> list[dict[str, Any]]:
    """Binding of ``pid`` and every descendant (vLLM's API server, engine core, workers)."""
    import psutil

    pids = [pid]
    try:
        pids += [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []
    out: list[dict[str, Any]] = []
    for p in pids:
        try:
            out.append(process_binding(p))
        except OSError:
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
