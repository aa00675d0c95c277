"""GPU–NUMA topology from sysfs, refined by NVML when it is usable."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Optional

from vllm_nodeagent import log
from vllm_nodeagent.host import Host
from vllm_nodeagent.host.parse import ParseError, clean_attr, format_cpulist, parse_bracket_list
from vllm_nodeagent.numa import CPU, GPU_MEMORY, MEMORY, Excluded, NumaNode, UsableNuma, discover_usable, read_list
from vllm_nodeagent.nvml import Nvml, NvmlCallError, NvmlGpu

if TYPE_CHECKING:
    from vllm_nodeagent.context import Context

__all__ = [
    "BlockDevice",
    "Excluded",
    "Gpu",
    "Nic",
    "NumaNode",
    "Topology",
    "discover",
    "discover_with_nvml",
    "render_table",
]

NVIDIA_VENDOR = "0x10de"
# PCI class 0x0300xx = VGA controller, 0x0302xx = 3D controller (datacenter GPUs). 0x0403 (HDA audio) is not a GPU.
GPU_CLASS_PREFIXES = ("0x0300", "0x0302")
# Domains are 4 hex digits, or 5+ behind an Intel VMD controller ("10000:01:00.0").
_BDF = re.compile(r"[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]")


@dataclass(frozen=True)
class Gpu:
    index: int
    pci_bus_id: str
    numa_node: int
    local_cpus: list[int]
    name: str
    source: str  # "nvml" | "sysfs"
    uuid: str = ""
    memory_node: int = -1  # the CPU-less node that is this GPU's own memory (Grace Hopper, POWER9+V100)
    no_locality: str = ""  # why numa_node is -1: the launcher does not bind such a GPU, doctor warns


@dataclass(frozen=True)
class Nic:
    name: str
    pci_bus_id: str
    numa_node: int


@dataclass(frozen=True)
class BlockDevice:
    name: str
    scheduler: Optional[str]
    available_schedulers: list[str]
    rotational: bool


@dataclass(frozen=True)
class Topology:
    numa_nodes: list[NumaNode]  # usable nodes of every kind; only kind "cpu" is a binding target
    gpus: list[Gpu]
    nics: list[Nic]
    block_devices: list[BlockDevice]
    gpu_links: list[list[str]] = field(default_factory=list)  # NVML only: X, NV#, PIX, PXB, PHB, NODE, SYS
    warnings: list[str] = field(default_factory=list)
    nvml_error: str = ""  # why NVML was not used ("" when it was, or when not asked)
    excluded: list[Excluded] = field(default_factory=list)  # CPUs and nodes left out, each with its reason
    problems: list[str] = field(default_factory=list)  # unreadable/malformed host files, each item skipped
    sources: dict[str, Any] = field(default_factory=dict)  # what was read: cpuset hierarchy and files, CPU online

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        return data

    def node(self, node_id: int) -> Optional[NumaNode]:
        return next((n for n in self.numa_nodes if n.id == node_id), None)

    def gpu(self, index: int) -> Optional[Gpu]:
        return next((g for g in self.gpus if g.index == index), None)

    def cpu_nodes(self) -> list[NumaNode]:
        """The binding targets: usable nodes with usable CPUs (never a GPU-memory or memory-only node)."""
        return [n for n in self.numa_nodes if n.kind == CPU and n.cpus]


# -- device locality -----------------------------------------------------------------------------------------
def _usable_node(numa: UsableNuma, node: int, how: str) -> tuple[int, str]:
    """(node, "") when ``node`` is a usable CPU node, else (-1, why not)."""
    found = numa.node(node)
    if found is not None and found.kind == CPU and found.cpus:
        return node, ""
    if found is not None and found.kind == CPU:
        return -1, f"{how} {node} has no CPU this process may use (see excluded)"
    if found is not None:
        return -1, f"{how} {node} is a {found.kind} node, not a CPU node"
    excluded = numa.why_excluded(node)
    if excluded:
        return -1, f"{how} {node} is not usable: {excluded}"
    return -1, f"{how} {node} is not a NUMA node of this host"


def pci_numa(host: Host, dev_path: str, numa: UsableNuma, warnings: list[str]) -> tuple[int, list[int], str]:
    """(NUMA node, usable local CPUs, why there is no node) of a PCI device directory.

    ``numa_node`` -1 means firmware gave no proximity (VMs, some boards). Then the device's ``local_cpulist``
    decides only when it lies on exactly one node (or the machine has one CPU node); a list that spans nodes
    is no locality at all (-1), never a guess.
    """
    raw_node = host.read_or(f"{dev_path}/numa_node", "-1") or "-1"
    try:
        node = int(clean_attr(raw_node) or "-1")
    except ValueError:
        warnings.append(f"{dev_path}/numa_node: not a number {raw_node!r}; ignored")
        node = -1
    local = read_list(host, f"{dev_path}/local_cpulist", warnings, f"{dev_path}/local_cpus") or []
    usable_cpus = {c for n in numa.nodes for c in n.cpus}
    why = ""
    node = numa.merged.get(node, node)  # a node ignored for repeating another's CPUs: the device is that one's
    if node >= 0:
        node, why = _usable_node(numa, node, "its numa_node")
    else:
        cpu_nodes = sorted(numa.machine_cpus)
        touched = [n for n in cpu_nodes if set(local) & set(numa.machine_cpus[n])]
        # A node with an unreadable CPU list could hold the device: then only a list inside one node decides.
        inside = len(touched) == 1 and set(local) <= set(numa.machine_cpus[touched[0]])
        # Of the nodes it touches, only one may be usable here (a job's cpuset on one node): hwloc, which sees
        # only the allowed CPUs, places the device there, and so does the agent.
        usable_touched = [n.id for n in numa.nodes if n.kind == CPU and set(n.cpus) & set(local)]
        if len(cpu_nodes) == 1 and not numa.unreadable:
            node, why = _usable_node(numa, cpu_nodes[0], "the only node")
        elif len(touched) == 1 and (inside or not numa.unreadable):
            node, why = _usable_node(numa, touched[0], "its local CPUs' node")
        elif len(usable_touched) == 1 and not numa.unreadable:
            node, why = _usable_node(numa, usable_touched[0], "the only usable node of its local CPUs")
        elif numa.unreadable and not touched:
            why = (
                f"numa_node is -1, no local CPUs, and node(s) {format_cpulist(numa.unreadable)} could not be "
                "read: no locality"
            )
        elif touched:
            why = (
                f"numa_node is -1 and its local CPUs {format_cpulist(local)} span nodes "
                f"{format_cpulist(touched)}: no locality"
            )
        else:
            why = "numa_node is -1 and it lists no local CPUs: no locality"
    cpus = sorted(set(local) & usable_cpus)
    if not cpus and node >= 0:
        match = numa.node(node)
        cpus = list(match.cpus) if match else []
    return node, cpus, why


# -- GPUs --------------------------------------------------------------------------------------------------
def sysfs_gpus(host: Host, numa: UsableNuma, warnings: list[str]) -> list[Gpu]:
    found: list[tuple[str, int, list[int], str, str]] = []
    for dev in host.glob("/sys/bus/pci/devices", "*"):
        bdf = dev.rsplit("/", 1)[1]
        if clean_attr(host.read_or(f"{dev}/vendor", "") or "") != NVIDIA_VENDOR:
            continue
        cls = clean_attr(host.read_or(f"{dev}/class", "") or "")
        if not cls.startswith(GPU_CLASS_PREFIXES):
            continue
        node, local, why = pci_numa(host, dev, numa, warnings)
        label = clean_attr(host.read_or(f"{dev}/label", "") or "") or f"NVIDIA {host.read_or(f'{dev}/device', '?')}"
        found.append((bdf, node, local, label, why))
    found.sort()
    return [
        Gpu(index=i, pci_bus_id=bdf, numa_node=node, local_cpus=local, name=label, source="sysfs", no_locality=why)
        for i, (bdf, node, local, label, why) in enumerate(found)
    ]


def _nvml_node(g: NvmlGpu, numa: UsableNuma, sys_node: int, warnings: list[str]) -> tuple[int, str]:
    # NVML's memory affinity names the nearest CPU node(s); a GPU-memory node is never the GPU's locality.
    near = [n for n in g.memory_nodes if n in numa.machine_cpus]
    if len(near) == 1:
        return _usable_node(numa, near[0], "NVML's memory affinity node")
    if not near:
        warnings.append(f"GPU {g.pci_bus_id}: NVML gave no memory affinity; using sysfs node {sys_node}")
        return sys_node, "" if sys_node >= 0 else "NVML gave no memory affinity and sysfs none either"
    if sys_node in near:
        warnings.append(f"GPU {g.pci_bus_id}: NVML memory affinity spans nodes {near}; sysfs says {sys_node}")
        return sys_node, ""
    return -1, f"NVML memory affinity spans nodes {format_cpulist(near)}: no locality"


def merge_nvml_gpus(host: Host, numa: UsableNuma, nvml_gpus: list[NvmlGpu], warnings: list[str]) -> list[Gpu]:
    """NVML's view, cross-checked against the same PCI device in sysfs. Index = order by bus id."""
    out: list[Gpu] = []
    usable_cpus = {c for n in numa.nodes for c in n.cpus}
    for i, g in enumerate(sorted(nvml_gpus, key=lambda g: g.pci_bus_id)):
        dev = f"/sys/bus/pci/devices/{g.pci_bus_id}"
        on_bus = host.exists(dev)
        sys_node, sys_cpus, sys_why = pci_numa(host, dev, numa, warnings) if on_bus else (-1, [], "")
        node, why = _nvml_node(g, numa, sys_node, warnings)
        if not why and node < 0:
            why = sys_why
        cpus = sorted(set(g.local_cpus) & usable_cpus) or sys_cpus
        if on_bus:
            if sys_node != node and sys_node >= 0:
                warnings.append(f"GPU {g.pci_bus_id}: NVML says NUMA node {node}, sysfs says {sys_node}")
            if sys_cpus and set(sys_cpus) != set(cpus):
                warnings.append(
                    f"GPU {g.pci_bus_id}: NVML local CPUs {format_cpulist(cpus)}, "
                    f"sysfs local_cpulist {format_cpulist(sys_cpus)}"
                )
        else:
            warnings.append(f"GPU {g.pci_bus_id}: NVML lists it but sysfs has no {dev}")
        out.append(
            Gpu(
                index=i,
                pci_bus_id=g.pci_bus_id,
                numa_node=node,
                local_cpus=cpus,
                name=g.name,
                source="nvml",
                uuid=g.uuid,
                no_locality=why,
            )
        )
    return out


def link_gpu_memory(numa: UsableNuma, gpus: list[Gpu], nvml: Optional[Nvml]) -> list[Gpu]:
    """Mark CPU-less nodes that are a GPU's own memory (driver numa_status, or NVML where it says so)."""
    if nvml is not None:
        for g in gpus:
            node_id = nvml.gpu_memory_numa_node(g.pci_bus_id) if g.source == "nvml" else None
            found = numa.node(node_id) if node_id is not None else None
            if found is not None and found.kind == MEMORY:
                numa.nodes[numa.nodes.index(found)] = replace(found, kind=GPU_MEMORY, gpu=g.pci_bus_id)
    owned = {n.gpu: n.id for n in numa.nodes if n.kind == GPU_MEMORY}
    return [replace(g, memory_node=owned.get(g.pci_bus_id, -1)) for g in gpus]


# -- NICs and disks ----------------------------------------------------------------------------------------
def discover_nics(host: Host, numa: UsableNuma, warnings: list[str]) -> list[Nic]:
    nics: list[Nic] = []
    for path in host.glob("/sys/class/net", "*"):
        if not host.exists(f"{path}/device"):
            continue  # lo, bridges, veth: no hardware behind them
        real = host.realpath(f"{path}/device")
        # virtio-net hangs off its PCI function (…/0000:00:03.0/virtio0): the nearest BDF upward is the device.
        bdfs = [part for part in real.split("/") if _BDF.fullmatch(part)]
        if not bdfs:
            continue
        pci = bdfs[-1]
        node, _, _ = pci_numa(host, f"/sys/bus/pci/devices/{pci}", numa, warnings)
        nics.append(Nic(name=path.rsplit("/", 1)[1], pci_bus_id=pci, numa_node=node))
    return nics


def discover_block(host: Host) -> list[BlockDevice]:
    devices: list[BlockDevice] = []
    for path in host.glob("/sys/block", "*"):
        if not host.exists(f"{path}/device"):
            continue  # loop, zram, ram and dm devices are virtual: no elevator worth tuning
        raw = host.read_or(f"{path}/queue/scheduler")
        if raw is None:
            continue
        try:
            current, offered = parse_bracket_list(raw)
        except ParseError:
            continue
        devices.append(
            BlockDevice(
                name=path.rsplit("/", 1)[1],
                scheduler=current,
                available_schedulers=offered,
                rotational=(host.read_or(f"{path}/queue/rotational", "0") == "1"),
            )
        )
    return devices


def discover(host: Host, nvml: Optional[Nvml] = None, nvml_error: str = "") -> Topology:
    """The host's usable topology. ``nvml`` None means sysfs only (``nvml_error`` says why, for the report)."""
    warnings: list[str] = []
    numa = discover_usable(host)
    problems = numa.warnings
    gpus: list[Gpu] = []
    if nvml is not None:
        cpu_count = max((c for cpus in numa.machine_cpus.values() for c in cpus), default=0) + 1
        node_count = max((n for n in numa.machine_cpus), default=0) + 1
        node_count = max([node_count] + [n.id + 1 for n in numa.nodes])
        try:
            gpus = merge_nvml_gpus(host, numa, nvml.gpus(cpu_count, node_count), warnings)
        except NvmlCallError as exc:
            nvml_error = str(exc)
            warnings.append(f"NVML failed, using sysfs: {exc}")
    gpu_links: list[list[str]] = []
    if nvml is not None and len(gpus) > 1 and all(g.source == "nvml" for g in gpus):
        try:
            gpu_links = nvml.link_matrix([g.pci_bus_id for g in gpus])
        except NvmlCallError as exc:
            warnings.append(f"NVML could not tell GPU-to-GPU links: {exc}")
    if not gpus:
        gpus = sysfs_gpus(host, numa, problems)
    gpus = link_gpu_memory(numa, gpus, nvml)
    return Topology(
        numa_nodes=numa.nodes,
        gpus=gpus,
        nics=discover_nics(host, numa, problems),
        block_devices=discover_block(host),
        gpu_links=gpu_links,
        warnings=warnings,
        nvml_error=nvml_error,
        excluded=numa.excluded,
        problems=problems,
        sources=numa.sources,
    )


def _node_label(n: NumaNode) -> str:
    if n.kind == GPU_MEMORY:
        return f"GPU memory ({n.gpu})"
    if n.kind == MEMORY:
        return "memory only"
    return "CPU" if n.cpus else "CPU (none usable)"


def render_table(topo: Topology) -> str:
    """A person's view, in the spirit of the CPU/NUMA affinity columns of ``nvidia-smi topo -m``."""

    def table(header: list[str], rows: list[list[str]]) -> list[str]:
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]

    lines = table(
        ["NUMA", "Kind", "CPUs", "Memory"],
        [
            [str(n.id), _node_label(n), format_cpulist(n.cpus) or "-", f"{n.memory_total_bytes / 2**30:.1f} GiB"]
            for n in topo.numa_nodes
        ],
    )
    for e in topo.excluded:
        what = "CPUs" if e.what == "cpu" else ("nodes" if len(e.ids) > 1 else "node")
        lines.append(f"excluded {what} {format_cpulist(e.ids)}: {e.reason}")
    lines.append("")
    if topo.gpus:
        lines += table(
            ["GPU", "PCI bus id", "NUMA Affinity", "CPU Affinity", "Name", "Source"],
            [
                [
                    f"GPU{g.index}",
                    g.pci_bus_id,
                    str(g.numa_node) if g.numa_node >= 0 else "N/A",
                    format_cpulist(g.local_cpus) or "N/A",
                    g.name,
                    g.source,
                ]
                for g in topo.gpus
            ],
        )
    else:
        lines.append("no NVIDIA GPU found")
    if topo.gpu_links:
        lines.append("")
        lines += table(
            [""] + [f"GPU{g.index}" for g in topo.gpus],
            [[f"GPU{g.index}", *row] for g, row in zip(topo.gpus, topo.gpu_links)],
        )
    if topo.nics:
        lines.append("")
        lines += table(["NIC", "PCI bus id", "NUMA"], [[n.name, n.pci_bus_id, str(n.numa_node)] for n in topo.nics])
    if topo.block_devices:
        lines.append("")
        lines += table(
            ["Disk", "Scheduler", "Available", "Rotational"],
            [
                [b.name, b.scheduler or "?", " ".join(b.available_schedulers), "yes" if b.rotational else "no"]
                for b in topo.block_devices
            ],
        )
    for w in topo.problems + topo.warnings:
        lines.append(f"warning: {w}")
    for g in topo.gpus:
        if g.no_locality:
            lines.append(f"note: GPU{g.index} is launched without a NUMA binding: {g.no_locality}")
    if topo.nvml_error:
        lines.append(f"note: NVML not used ({topo.nvml_error}); GPUs from sysfs")
    return "\n".join(lines)


def discover_with_nvml(ctx: Context, log_warnings: bool = True) -> Topology:
    """Discover with NVML when it opens; warnings are logged once here (``log_warnings=False``: the caller shows
    them in its result, as `topology` does: once, not also on stderr)."""
    nvml, why = ctx.open_nvml()
    try:
        topo = discover(ctx.host, nvml, why)
    finally:
        if nvml is not None:
            nvml.close()
    logger = log.get()
    if not log_warnings:
        return topo
    if why:
        logger.warning("nvml_unavailable", reason=why)
    for w in topo.warnings:
        logger.warning("topology_mismatch", detail=w)
    for p in topo.problems:
        logger.warning("topology_unreadable", detail=p)  # that item was skipped; discovery went on
    return topo
