"""Config + topology -> the list of settings; and journal entries -> writers for revert."""

from __future__ import annotations

from typing import Optional

from vllm_nodeagent.config import Config
from vllm_nodeagent.host import Host
from vllm_nodeagent.nvml import Nvml
from vllm_nodeagent.topology import Topology
from vllm_nodeagent.tunables.base import FileTunable, MultiFileTunable, Tunable, Unavailable
from vllm_nodeagent.tunables.block import BlockScheduler, matching_devices
from vllm_nodeagent.tunables.cpu import CpuGovernor
from vllm_nodeagent.tunables.gpu import PersistenceMode
from vllm_nodeagent.tunables.irq import IrqAffinity, Irqbalance, device_irqs
from vllm_nodeagent.tunables.sysctl import Sysctl
from vllm_nodeagent.tunables.thp import Thp


def build_tunables(
    config: Config, topology: Topology, host: Host, nvml: Optional[Nvml] = None, nvml_error: str = ""
) -> list[Tunable]:
    """Every setting the config asks to manage, in apply order."""
    out: list[Tunable] = []
    for s in config.sysctl or ():
        out.append(Sysctl.from_setting(host, s))
    if config.thp is not None:
        for knob in ("enabled", "defrag"):
            value = getattr(config.thp, knob)
            if value is not None:
                out.append(Thp(host, knob, value))
    if config.block is not None:
        devices = matching_devices(host, config.block.devices)
        for dev in devices:
            out.append(BlockScheduler(host, dev, config.block.scheduler))
        if not devices:
            out.append(Unavailable("block.scheduler", config.block.scheduler,
                                   f"no block device matches {' '.join(config.block.devices)}"))
    if config.cpu is not None and config.cpu.governor is not None:
        out.append(CpuGovernor(host, config.cpu.governor))
    if config.gpu is not None and config.gpu.persistence_mode is not None:
        for g in topology.gpus:
            out.append(PersistenceMode(host, nvml, g.index, g.pci_bus_id, config.gpu.persistence_mode, nvml_error))
    if config.irq is not None:
        if config.irq.irqbalance in ("stop", "keep"):
            out.append(Irqbalance(host, config.irq.irqbalance))
        if config.irq.affinity:
            for g in topology.gpus:
                out.append(IrqAffinity(host, f"gpu{g.index}", device_irqs(host, g.pci_bus_id), g.local_cpus))
            for nic in topology.nics:
                node = topology.node(nic.numa_node)
                if node is not None:
                    irqs = device_irqs(host, nic.pci_bus_id, (nic.name,))
                    out.append(IrqAffinity(host, nic.name, irqs, node.cpus))
    return out


def rebuild(kind: str, id: str, params: dict[str, str], host: Host, nvml: Optional[Nvml]) -> Tunable:
    """A reader/writer for a journaled setting, independent of today's config (it may have changed)."""
    if kind == "sysctl":
        return Sysctl(host, params["name"])
    if kind == "thp":
        return Thp(host, params["knob"])
    if kind == "block":
        return BlockScheduler(host, params["device"])
    if kind == "cpu":
        return CpuGovernor(host, paths=params)
    if kind == "gpu":
        return PersistenceMode(host, nvml, int(params["index"]), params["pci_bus_id"])
    if kind == "irqbalance":
        return Irqbalance(host)
    if kind == "irq":
        return IrqAffinity(host, id.split(".")[1], paths=params)
    if kind == "file":
        return FileTunable(host, id, params["path"])
    if kind == "multifile":
        return MultiFileTunable(host, id, params)
    raise ValueError(f"journal entry {id!r} has unknown kind {kind!r}")
