"""hwloc's view of a machine or a tree, to cross-check the agent's topology against a real peer tool.

``lstopo-no-graphics --of xml`` (Debian package hwloc-nox) reads the running machine, or a sysfs/procfs tree when
``HWLOC_FSROOT`` names one. Like the agent, hwloc leaves out CPUs and nodes that are offline or outside the
cgroup's cpuset, and places a PCI device under the smallest object holding its ``local_cpus``.
Also used inside the VM test bed's guests (tests/vm), so it sticks to the standard library.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

LSTOPO = "lstopo-no-graphics"


@dataclass(frozen=True)
class HwlocNode:
    id: int
    cpus: list[int]
    memory_bytes: int
    gpu_memory: bool  # subtype GPUMemory: an NVIDIA GPU's memory exposed as a node


@dataclass(frozen=True)
class HwlocView:
    nodes: dict[int, HwlocNode]
    pci_node: dict[str, int]  # PCI bus id -> the one CPU node it is local to, or -1


def hwloc_bitmap(text: str) -> list[int]:
    """hwloc's bitmap string ("0x000000ff,0xffffffff", an empty word = 0) as sorted ids."""
    words = text.split(",")
    value = 0
    for word in words:
        word = word.strip()
        value = (value << 32) | (int(word, 16) if word else 0)
    return [bit for bit in range(value.bit_length()) if value >> bit & 1]


def lstopo_xml(fsroot: Optional[Path] = None) -> str:
    """lstopo's XML; raises FileNotFoundError when hwloc is not installed."""
    tool = shutil.which(LSTOPO)
    if tool is None:
        raise FileNotFoundError(f"{LSTOPO} not installed (apt-get install hwloc-nox)")
    env = dict(os.environ)
    env["HWLOC_KEEP_NVIDIA_GPU_NUMA_NODES"] = "1"  # keep GPU-memory nodes, marked subtype GPUMemory
    if fsroot is not None:
        env["HWLOC_FSROOT"] = str(fsroot)
        env["HWLOC_COMPONENTS"] = "-x86"  # cpuid would describe this machine's caches, not the tree's
    out = subprocess.run([tool, "--of", "xml"], env=env, capture_output=True, text=True, check=True, timeout=120)
    return out.stdout


def parse_view(xml_text: str) -> HwlocView:
    root = ET.fromstring(xml_text)  # noqa: S314 - lstopo's own output, produced by this test on this machine
    nodes: dict[int, HwlocNode] = {}
    for obj in root.iter("object"):
        if obj.get("type") == "NUMANode":
            nid = int(obj.get("os_index", "-1"))
            nodes[nid] = HwlocNode(
                nid,
                hwloc_bitmap(obj.get("cpuset", "0x0")),
                int(obj.get("local_memory", "0")),
                obj.get("subtype") == "GPUMemory",
            )
    cpu_nodes = {n.id for n in nodes.values() if n.cpus and not n.gpu_memory}
    pci: dict[str, int] = {}

    def walk(obj: ET.Element, nodeset: list[int]) -> None:
        for child in obj.findall("object"):
            own = child.get("nodeset")
            here = hwloc_bitmap(own) if own is not None else nodeset  # I/O objects carry none: inherit
            if child.get("type") == "PCIDev":
                local = [n for n in here if n in cpu_nodes]
                pci[child.get("pci_busid", "")] = local[0] if len(local) == 1 else -1
            walk(child, here)

    walk(root, [])
    return HwlocView(nodes, pci)


def cpulist_ints(value: Any) -> list[int]:
    """A cpulist as the agent's JSON contract writes it ("0-3,8"; "" for none), or already a list, as ints."""
    if isinstance(value, list):
        return [int(v) for v in value]
    out: list[int] = []
    for part in str(value).strip().split(","):
        if part:
            lo, _, hi = part.partition("-")
            out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def _node(value: Any) -> int:
    return -1 if value is None else int(value)  # the contract's null = no node; hwloc's view says -1


def compare(
    agent: dict[str, Any], view: HwlocView, memory_tolerance: float = 0.02, agent_after: Optional[dict[str, Any]] = None
) -> list[str]:
    """Differences between ``vllm-nodeagent topology --json`` and hwloc's view ([] = they agree).

    Memory is compared within ``memory_tolerance``; on a machine whose memory moves (a ballooning VM), pass
    the agent's answer from before and after lstopo ran and hwloc's figure may lie anywhere between the two.
    """
    diffs: list[str] = []
    mine = {n["id"]: n for n in agent["numa_nodes"]}
    after = {n["id"]: n for n in (agent_after or agent)["numa_nodes"]}
    if set(mine) != set(view.nodes):
        diffs.append(f"NUMA nodes: agent {sorted(mine)}, hwloc {sorted(view.nodes)}")
    for nid in sorted(set(mine) & set(view.nodes)):
        a, h = mine[nid], view.nodes[nid]
        if (a["kind"] == "gpu-memory") != h.gpu_memory:
            diffs.append(f"node {nid}: agent kind {a['kind']}, hwloc GPUMemory={h.gpu_memory}")
        if not h.gpu_memory and cpulist_ints(a["cpus"]) != h.cpus:  # hwloc gives a GPU-memory node its GPU's CPUs
            diffs.append(f"node {nid} CPUs: agent {a['cpus']}, hwloc {h.cpus}")
        seen = [a["memory_total_bytes"], after.get(nid, a)["memory_total_bytes"]]
        low, high = min(seen) * (1 - memory_tolerance), max(seen) * (1 + memory_tolerance)
        if not low <= h.memory_bytes <= high:
            diffs.append(f"node {nid} memory: agent {seen}, hwloc {h.memory_bytes}")
    devices = [(f"GPU {g['pci_bus_id']}", g["pci_bus_id"], _node(g["numa_node"])) for g in agent["gpus"]]
    devices += [(f"NIC {n['name']}", n["pci_bus_id"], _node(n["numa_node"])) for n in agent["nics"]]
    for label, bus, node in devices:
        if bus not in view.pci_node:
            diffs.append(f"{label}: hwloc does not list {bus}")
        elif view.pci_node[bus] != node:
            diffs.append(f"{label}: agent node {node}, hwloc node {view.pci_node[bus]}")
    return diffs
