"""GPU–NUMA topology from sysfs, refined by NVML when it is usable."""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from vllm_nodeagent.host import Host
from vllm_nodeagent.nvml import Nvml, NvmlCallError, NvmlGpu
from vllm_nodeagent.parse import ParseError, format_cpulist, parse_bracket_list, parse_cpulist, parse_meminfo

NVIDIA_VENDOR = "0x10de"
# PCI class 0x0300xx = VGA controller, 0x0302xx = 3D controller (datacenter GPUs). 0x0403 (HDA audio) is not a GPU.
GPU_CLASS_PREFIXES = ("0x0300", "0x0302")
_BDF = re.compile(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]")


@dataclass(frozen=True)
class NumaNode:
    id: int
    cpus: list[int]
    memory_total_bytes: int


@dataclass(frozen=True)
class Gpu:
    index: int
    pci_bus_id: str
    numa_node: int
    local_cpus: list[int]
    name: str
    source: str  # "nvml" | "sysfs"
    uuid: str = ""


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
    numa_nodes: list[NumaNode]
    gpus: list[Gpu]
    nics: list[Nic]
    block_devices: list[BlockDevice]
    gpu_links: list[list[str]] = field(default_factory=list)  # NVML only: X, NV#, PIX, PXB, PHB, NODE, SYS
    warnings: list[str] = field(default_factory=list)
    nvml_error: str = ""  # why NVML was not used ("" when it was, or when not asked)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        return data

    def node(self, node_id: int) -> Optional[NumaNode]:
        return next((n for n in self.numa_nodes if n.id == node_id), None)

    def gpu(self, index: int) -> Optional[Gpu]:
        return next((g for g in self.gpus if g.index == index), None)


# -- NUMA --------------------------------------------------------------------------------------------------
def discover_numa(host: Host) -> list[NumaNode]:
    nodes: list[NumaNode] = []
    for path in host.glob("/sys/devices/system/node", "node*"):
        suffix = path.rsplit("node", 1)[1]
        if not suffix.isdigit():
            continue
        cpus = parse_cpulist(host.read_or(f"{path}/cpulist", "") or "")
        meminfo = parse_meminfo(host.read_or(f"{path}/meminfo", "") or "")
        nodes.append(NumaNode(id=int(suffix), cpus=cpus, memory_total_bytes=meminfo.get("MemTotal", 0)))
    if nodes:
        return sorted(nodes, key=lambda n: n.id)
    # Kernels built without CONFIG_NUMA have no node directory: the whole machine is node 0.
    online = host.read_or("/sys/devices/system/cpu/online", "") or ""
    cpus = parse_cpulist(online) if online else list(range(os.cpu_count() or 1))
    total = parse_meminfo(host.read_or("/proc/meminfo", "") or "").get("MemTotal", 0)
    return [NumaNode(id=0, cpus=cpus, memory_total_bytes=total)]


def node_for_cpus(nodes: list[NumaNode], cpus: list[int]) -> Optional[int]:
    """The node holding most of ``cpus`` (ties: lowest id); None when no CPU matches any node."""
    wanted = set(cpus)
    best: Optional[int] = None
    best_overlap = 0
    for n in nodes:
        overlap = len(wanted & set(n.cpus))
        if overlap > best_overlap:
            best, best_overlap = n.id, overlap
    return best


def pci_numa(host: Host, dev_path: str, nodes: list[NumaNode]) -> tuple[int, list[int]]:
    """(NUMA node, local CPUs) of a PCI device directory.

    ``numa_node`` is -1 when firmware gives no proximity (VMs, some single-socket boards); then the node that
    holds ``local_cpulist`` is the answer, and on a one-node host it is node 0.
    """
    raw_node = host.read_or(f"{dev_path}/numa_node", "-1") or "-1"
    try:
        node = int(raw_node)
    except ValueError:
        node = -1
    local_raw = host.read_or(f"{dev_path}/local_cpulist")
    local = parse_cpulist(local_raw) if local_raw is not None else []
    if node < 0:
        guessed = node_for_cpus(nodes, local) if local else None
        if guessed is not None and len(nodes) > 1:
            node = guessed
        elif len(nodes) == 1:
            node = nodes[0].id
        else:
            node = guessed if guessed is not None else -1
    if not local and node >= 0:
        match = next((n for n in nodes if n.id == node), None)
        local = list(match.cpus) if match else []
    return node, local


# -- GPUs --------------------------------------------------------------------------------------------------
def sysfs_gpus(host: Host, nodes: list[NumaNode]) -> list[Gpu]:
    found: list[tuple[str, int, list[int], str]] = []
    for dev in host.glob("/sys/bus/pci/devices", "*"):
        bdf = dev.rsplit("/", 1)[1]
        if host.read_or(f"{dev}/vendor") != NVIDIA_VENDOR:
            continue
        cls = host.read_or(f"{dev}/class", "") or ""
        if not cls.startswith(GPU_CLASS_PREFIXES):
            continue
        node, local = pci_numa(host, dev, nodes)
        label = host.read_or(f"{dev}/label") or f"NVIDIA {host.read_or(f'{dev}/device', '?')}"
        found.append((bdf, node, local, label))
    found.sort()
    return [
        Gpu(index=i, pci_bus_id=bdf, numa_node=node, local_cpus=local, name=label, source="sysfs")
        for i, (bdf, node, local, label) in enumerate(found)
    ]


def merge_nvml_gpus(host: Host, nodes: list[NumaNode], nvml_gpus: list[NvmlGpu], warnings: list[str]) -> list[Gpu]:
    """NVML's view, cross-checked against the same PCI device in sysfs. Index = order by bus id."""
    out: list[Gpu] = []
    for i, g in enumerate(sorted(nvml_gpus, key=lambda g: g.pci_bus_id)):
        dev = f"/sys/bus/pci/devices/{g.pci_bus_id}"
        sys_node, sys_cpus = pci_numa(host, dev, nodes) if host.exists(dev) else (-1, [])
        if g.memory_nodes:
            node = g.memory_nodes[0]
            if len(g.memory_nodes) > 1:
                warnings.append(
                    f"GPU {g.pci_bus_id}: NVML memory affinity spans nodes {list(g.memory_nodes)}; using {node}"
                )
        else:
            node = sys_node
            warnings.append(f"GPU {g.pci_bus_id}: NVML gave no memory affinity; using sysfs node {sys_node}")
        cpus = list(g.local_cpus) or sys_cpus
        if host.exists(dev):
            if sys_node != node:
                warnings.append(f"GPU {g.pci_bus_id}: NVML says NUMA node {node}, sysfs says {sys_node}")
            if sys_cpus and set(sys_cpus) != set(cpus):
                warnings.append(
                    f"GPU {g.pci_bus_id}: NVML local CPUs {format_cpulist(cpus)}, "
                    f"sysfs local_cpulist {format_cpulist(sys_cpus)}"
                )
        else:
            warnings.append(f"GPU {g.pci_bus_id}: NVML lists it but sysfs has no {dev}")
        out.append(
            Gpu(index=i, pci_bus_id=g.pci_bus_id, numa_node=node, local_cpus=cpus, name=g.name,
                source="nvml", uuid=g.uuid)
        )
    return out


# -- NICs and disks ----------------------------------------------------------------------------------------
def discover_nics(host: Host, nodes: list[NumaNode]) -> list[Nic]:
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
        node, _ = pci_numa(host, f"/sys/bus/pci/devices/{pci}", nodes)
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
    """The host's topology. ``nvml`` None means sysfs only (``nvml_error`` says why, for the report)."""
    warnings: list[str] = []
    nodes = discover_numa(host)
    gpus: list[Gpu] = []
    if nvml is not None:
        cpu_count = max((c for n in nodes for c in n.cpus), default=0) + 1
        try:
            gpus = merge_nvml_gpus(host, nodes, nvml.gpus(cpu_count, max(n.id for n in nodes) + 1), warnings)
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
        gpus = sysfs_gpus(host, nodes)
    return Topology(
        numa_nodes=nodes,
        gpus=gpus,
        nics=discover_nics(host, nodes),
        block_devices=discover_block(host),
        gpu_links=gpu_links,
        warnings=warnings,
        nvml_error=nvml_error,
    )


def render_table(topo: Topology) -> str:
    """A person's view, in the spirit of the CPU/NUMA affinity columns of ``nvidia-smi topo -m``."""

    def table(header: list[str], rows: list[list[str]]) -> list[str]:
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]

    lines = table(
        ["NUMA", "CPUs", "Memory"],
        [[str(n.id), format_cpulist(n.cpus), f"{n.memory_total_bytes / 2**30:.1f} GiB"] for n in topo.numa_nodes],
    )
    lines.append("")
    if topo.gpus:
        lines += table(
            ["GPU", "PCI bus id", "NUMA Affinity", "CPU Affinity", "Name", "Source"],
            [[f"GPU{g.index}", g.pci_bus_id, str(g.numa_node) if g.numa_node >= 0 else "N/A",
              format_cpulist(g.local_cpus) or "N/A", g.name, g.source] for g in topo.gpus],
        )
    else:
        lines.append("no NVIDIA GPU found")
    if topo.gpu_links:
        lines.append("")
        lines += table([""] + [f"GPU{g.index}" for g in topo.gpus],
                       [[f"GPU{g.index}", *row] for g, row in zip(topo.gpus, topo.gpu_links)])
    if topo.nics:
        lines.append("")
        lines += table(["NIC", "PCI bus id", "NUMA"], [[n.name, n.pci_bus_id, str(n.numa_node)] for n in topo.nics])
    if topo.block_devices:
        lines.append("")
        lines += table(
            ["Disk", "Scheduler", "Available", "Rotational"],
            [[b.name, b.scheduler or "?", " ".join(b.available_schedulers), "yes" if b.rotational else "no"]
             for b in topo.block_devices],
        )
    for w in topo.warnings:
        lines.append(f"warning: {w}")
    if topo.nvml_error:
        lines.append(f"note: NVML not used ({topo.nvml_error}); GPUs from sysfs")
    return "\n".join(lines)
