"""The NUMA nodes and CPUs this process may actually use, and what was left out and why.

A node's ``cpulist`` is the machine's view. What a launcher may bind to is narrower: CPUs must be online
(``/sys/devices/system/cpu/online``), in the process's affinity (``Cpus_allowed_list`` of /proc/self/status) and
in its cgroup's effective cpuset; nodes must be in ``Mems_allowed_list`` and the cgroup's effective mems. Every
read goes through the host seam, so a ``--root`` tree answers for itself; a malformed file becomes a warning on
that one item and discovery goes on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from vllm_nodeagent.cpuset import Allowed, cgroup_allowed
from vllm_nodeagent.host import Host
from vllm_nodeagent.host.parse import (
    ParseError,
    format_cpulist,
    normalize_pci_bus_id,
    parse_cpulist,
    parse_cpumask,
    parse_meminfo,
    parse_nvidia_numa_status,
    status_field,
)

CPU, MEMORY, GPU_MEMORY = "cpu", "memory", "gpu-memory"
NODE_DIR = "/sys/devices/system/node"
CPU_DIR = "/sys/devices/system/cpu"


@dataclass(frozen=True)
class NumaNode:
    id: int
    cpus: list[int]  # usable CPUs only (a CPU node may have none left: then it is no binding target)
    memory_total_bytes: int
    kind: str = CPU  # cpu | memory (CPU-less: CXL, HBM, NVDIMM) | gpu-memory (a GPU's memory as a node)
    gpu: str = ""  # gpu-memory: the PCI bus id of the GPU it belongs to


@dataclass(frozen=True)
class Excluded:
    what: str  # "cpu" | "node"
    ids: list[int]
    reason: str


@dataclass
class UsableNuma:
    nodes: list[NumaNode]  # usable nodes, every kind
    machine_cpus: dict[int, list[int]]  # node -> CPUs as sysfs lists them (hardware locality, before narrowing)
    excluded: list[Excluded] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    unreadable: list[int] = field(default_factory=list)  # nodes whose CPUs are unknown: locality may not guess
    sources: dict[str, Any] = field(default_factory=dict)  # what was read: cpuset hierarchy, CPU online files
    merged: dict[int, int] = field(default_factory=dict)  # ignored node -> the node whose CPUs it repeated

    def node(self, node_id: int) -> Optional[NumaNode]:
        return next((n for n in self.nodes if n.id == node_id), None)

    def why_excluded(self, node_id: int) -> Optional[str]:
        return next((e.reason for e in self.excluded if e.what == "node" and node_id in e.ids), None)


def read_list(host: Host, path: str, warnings: list[str], mask_path: str = "") -> Optional[list[int]]:
    """A cpulist/nodelist file (``mask_path``: the hex-mask twin to fall back on); None when neither is usable."""
    raw = host.read_or(path)
    if raw is not None:
        try:
            return parse_cpulist(raw)
        except ParseError as exc:
            warnings.append(f"{path}: {exc}" + (f"; trying {mask_path}" if mask_path else "; ignored"))
    if mask_path:
        raw_mask = host.read_or(mask_path)
        if raw_mask is not None:
            try:
                return parse_cpumask(raw_mask)
            except ParseError as exc:
                warnings.append(f"{mask_path}: {exc}; ignored")
    return None


def _memory(host: Host, path: str, warnings: list[str]) -> int:
    try:
        return parse_meminfo(host.read_or(path, "") or "").get("MemTotal", 0)
    except ParseError as exc:
        warnings.append(f"{path}: {exc}; memory unknown")
        return 0


# -- what the process is allowed ---------------------------------------------------------------------------
def _status_allowed(host: Host, key: str, warnings: list[str]) -> Allowed:
    text = host.read_or("/proc/self/status")
    value = status_field(text, key) if text is not None else None
    if value is None:
        return Allowed(None, "")
    try:
        return Allowed(frozenset(parse_cpulist(value)), f"{key} {value} (/proc/self/status)")
    except ParseError as exc:
        warnings.append(f"/proc/self/status {key}: {exc}; ignored")
        return Allowed(None, "")


# -- GPU memory exposed as nodes ---------------------------------------------------------------------------
def nvidia_gpu_memory_nodes(host: Host, warnings: list[str]) -> dict[int, str]:
    """node -> GPU bus id, from the driver's /proc/driver/nvidia/gpus/<bus>/numa_status (coherent platforms)."""
    out: dict[int, str] = {}
    for path in host.glob("/proc/driver/nvidia/gpus", "*"):
        raw = host.read_or(f"{path}/numa_status")
        if raw is None:
            continue
        try:
            node, _status = parse_nvidia_numa_status(raw)
            bus = normalize_pci_bus_id(path.rsplit("/", 1)[1])
        except ParseError as exc:
            warnings.append(f"{path}/numa_status: {exc}; ignored")
            continue
        if node >= 0:
            out[node] = bus
    return out


# -- the nodes -----------------------------------------------------------------------------------------------
def _machine_nodes(host: Host, warnings: list[str]) -> tuple[dict[int, Optional[list[int]]], dict[int, int]]:
    """node -> CPUs (None: unreadable) and node -> memory, as the machine has them."""
    cpus: dict[int, Optional[list[int]]] = {}
    memory: dict[int, int] = {}
    for path in host.glob(NODE_DIR, "node*"):
        suffix = path.rsplit("node", 1)[1]
        if not suffix.isdigit():
            continue
        node = int(suffix)
        cpus[node] = read_list(host, f"{path}/cpulist", warnings, f"{path}/cpumap")
        memory[node] = _memory(host, f"{path}/meminfo", warnings)
    if cpus:
        return cpus, memory
    # Kernels built without CONFIG_NUMA have no node directory: the whole machine is node 0 (from the tree,
    # never from the running machine).
    every = read_list(host, f"{CPU_DIR}/online", warnings) or read_list(host, f"{CPU_DIR}/possible", warnings)
    if every is None:
        every = sorted(
            int(p.rsplit("cpu", 1)[1]) for p in host.glob(CPU_DIR, "cpu[0-9]*") if p.rsplit("cpu", 1)[1].isdigit()
        )
    return {0: every}, {0: _memory(host, "/proc/meminfo", warnings)}


def overlapping_nodes(raw_cpus: dict[int, Optional[list[int]]]) -> dict[int, int]:
    """node -> the lower node whose CPUs it shares. Firmware that gives several nodes the same CPUs (every node
    the full cpumap) describes no locality; hwloc ignores such nodes ("buggy NUMA") and so does the agent."""
    seen: dict[int, int] = {}  # cpu -> the node that has it
    out: dict[int, int] = {}
    for node in sorted(raw_cpus):
        cpus = raw_cpus[node] or []
        shared = next((seen[c] for c in cpus if c in seen), None)
        if shared is not None:
            out[node] = shared
            continue
        seen.update({c: node for c in cpus})
    return out


def cpu_offline(host: Host, cpus: list[int], warnings: list[str]) -> tuple[Optional[set[int]], str]:
    """(offline CPUs, what said so): the global online list, else each cpuN/online (some kernels and trees have
    only those; cpu0 often has none: it cannot be unplugged)."""
    online = read_list(host, f"{CPU_DIR}/online", warnings)
    if online is not None:
        return set(cpus) - set(online), f"{CPU_DIR}/online = {format_cpulist(online)}"
    off = {c for c in cpus if (host.read_or(f"{CPU_DIR}/cpu{c}/online") or "").strip().strip("\x00") == "0"}
    return off, f"{CPU_DIR}/cpuN/online"


def discover_usable(host: Host) -> UsableNuma:
    warnings: list[str] = []
    raw_cpus, memory = _machine_nodes(host, warnings)
    buggy = overlapping_nodes(raw_cpus)
    every_cpu = sorted({c for cpus in raw_cpus.values() for c in cpus or []})
    offline, online_source = cpu_offline(host, every_cpu, warnings)
    nodes_online = read_list(host, f"{NODE_DIR}/online", warnings) if host.exists(f"{NODE_DIR}/online") else None
    has_memory = read_list(host, f"{NODE_DIR}/has_memory", warnings) if host.exists(f"{NODE_DIR}/has_memory") else None
    aff_cpus = _status_allowed(host, "Cpus_allowed_list", warnings)
    aff_mems = _status_allowed(host, "Mems_allowed_list", warnings)
    cg_cpus, cg_mems, cpuset_source = cgroup_allowed(host, warnings)
    if buggy:
        warnings.append(
            f"node(s) {format_cpulist(sorted(buggy))} list the CPUs of node(s) "
            f"{format_cpulist(sorted(set(buggy.values())))} (firmware NUMA information is inconsistent): "
            "ignored, as hwloc does"
        )
    for own, cg, what in ((aff_cpus, cg_cpus, "CPUs"), (aff_mems, cg_mems, "nodes")):
        if own.ids is not None and cg.ids is not None and not own.ids <= cg.ids:
            warnings.append(
                f"{what}: {own.source} is not within {cg.source}: the cgroup read may not be this process's; using both"
            )
    gpu_mem = nvidia_gpu_memory_nodes(host, warnings)

    def cpu_reason(cpu: int) -> str:
        if offline and cpu in offline:
            per_cpu = online_source.endswith("cpuN/online")
            return f"offline ({CPU_DIR}/cpu{cpu}/online = 0)" if per_cpu else f"offline ({online_source})"
        if cg_cpus.ids is not None and cpu not in cg_cpus.ids:
            return f"not in the cgroup's cpuset ({cg_cpus.source})"
        if aff_cpus.ids is not None and cpu not in aff_cpus.ids:
            return f"not in this process's CPU affinity ({aff_cpus.source})"
        return ""

    def node_reason(node: int, cpus: Optional[list[int]]) -> str:
        if cpus is None:
            return "its CPU list could not be read (see warnings)"
        if node in buggy:
            return f"its CPUs are node {buggy[node]}'s (inconsistent firmware NUMA information, ignored as hwloc does)"
        if nodes_online is not None and node not in nodes_online:
            return f"offline ({NODE_DIR}/online = {format_cpulist(nodes_online)})"
        if cg_mems.ids is not None and node not in cg_mems.ids:
            return f"not in the cgroup's memory nodes ({cg_mems.source})"
        # A CPU-less node onlined after this process started (a GPU's memory, CXL) is missing from its
        # Mems_allowed but still a node of the machine (hwloc lists it; only the cgroup's mems bound it).
        memory_only = not cpus and (has_memory is None or node in has_memory)
        if aff_mems.ids is not None and node not in aff_mems.ids and not memory_only:
            return f"not in this process's allowed memory nodes ({aff_mems.source})"
        return ""

    by_reason: dict[str, list[int]] = {}
    nodes: list[NumaNode] = []
    node_excl: dict[str, list[int]] = {}
    for node in sorted(raw_cpus):
        cpus = raw_cpus[node]
        usable: list[int] = []
        for cpu in [] if node in buggy else cpus or []:
            reason = cpu_reason(cpu)
            if reason:
                by_reason.setdefault(reason, []).append(cpu)
            else:
                usable.append(cpu)
        reason = node_reason(node, cpus)
        if reason:
            node_excl.setdefault(reason, []).append(node)
            if usable and node not in buggy:  # a buggy node's CPUs belong to the node that kept them
                by_reason.setdefault(f"on node {node}, which is not usable", []).extend(usable)
            continue
        if cpus:
            # Its memory is allowed even when none of its CPUs is (kept, with no CPUs: not a binding target).
            nodes.append(NumaNode(node, usable, memory[node]))
        elif node in gpu_mem:
            nodes.append(NumaNode(node, [], memory[node], GPU_MEMORY, gpu_mem[node]))
        else:
            nodes.append(NumaNode(node, [], memory[node], MEMORY))
    excluded = [Excluded("cpu", sorted(ids), r) for r, ids in by_reason.items()]
    excluded += [Excluded("node", ids, r) for r, ids in node_excl.items()]
    machine = {n: list(c) for n, c in raw_cpus.items() if c and n not in buggy}
    unreadable = [n for n, c in raw_cpus.items() if c is None]
    sources: dict[str, Any] = {"cpuset": cpuset_source.to_json(), "cpu_online": online_source}
    return UsableNuma(
        nodes=nodes,
        machine_cpus=machine,
        excluded=excluded,
        warnings=warnings,
        unreadable=unreadable,
        sources=sources,
        merged=buggy,
    )
