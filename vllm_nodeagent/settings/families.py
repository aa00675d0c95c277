"""Config + topology -> the list of settings; and journal entries -> writers for revert."""

from __future__ import annotations

import re
from typing import Optional

from vllm_nodeagent.config import Config
from vllm_nodeagent.host import Host
from vllm_nodeagent.nvml import Nvml
from vllm_nodeagent.settings.base import Tunable, Unavailable
from vllm_nodeagent.settings.block import BlockScheduler, matching_devices
from vllm_nodeagent.settings.cpu import CPUFREQ_DIR, CpuGovernor
from vllm_nodeagent.settings.gpu import PersistenceMode
from vllm_nodeagent.settings.irq import IrqAffinity, Irqbalance, device_irqs
from vllm_nodeagent.settings.sysctl import Sysctl
from vllm_nodeagent.settings.thp import Thp
from vllm_nodeagent.topology import Topology


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


_SYSCTL_NAME = re.compile(r"[a-z0-9_]+(\.[A-Za-z0-9_\-]+)+")
_DEVICE = re.compile(r"[A-Za-z0-9_\-:]{1,64}")
_PCI = re.compile(r"[0-9a-fA-F]{4,8}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]")
_POLICY = re.compile(r"policy[0-9]{1,5}")
_IRQ = re.compile(r"[0-9]{1,6}")


def rebuild(kind: str, id: str, params: dict[str, str], host: Host, nvml: Optional[Nvml]) -> Tunable:
    """A reader/writer for a journaled setting, independent of today's config (it may have changed).

    The journal is input: each family rebuilds only its own kernel paths (a sysctl under /proc/sys, a scheduler
    under /sys/block, ...), and the id must be the one that family gives that setting. Raises ValueError.
    """
    t = _rebuild(kind, id, params, host, nvml)
    if t.id != id:
        raise ValueError(f"id {id!r} does not match its {kind} parameters")
    return t


def _rebuild(kind: str, id: str, params: dict[str, str], host: Host, nvml: Optional[Nvml]) -> Tunable:
    def need(key: str, pattern: re.Pattern[str]) -> str:
        value = params.get(key)
        if value is None or not pattern.fullmatch(value) or ".." in value:
            raise ValueError(f"{kind} entry has a bad {key} {str(value)[:80]!r}")
        return value

    def only(*keys: str) -> None:
        extra = set(params) - set(keys)
        if extra:
            raise ValueError(f"{kind} entry has unexpected parameter {sorted(extra)[0][:80]!r}")

    if kind == "sysctl":
        only("name")
        return Sysctl(host, need("name", _SYSCTL_NAME))
    if kind == "thp":
        only("knob")
        return Thp(host, need("knob", re.compile("enabled|defrag")))
    if kind == "block":
        only("device")
        return BlockScheduler(host, need("device", _DEVICE))
    if kind == "cpu":
        for name, path in params.items():
            if not _POLICY.fullmatch(name) or path != f"{CPUFREQ_DIR}/{name}/scaling_governor":
                raise ValueError(f"cpu entry names a path outside cpufreq: {path[:80]!r}")
        return CpuGovernor(host, paths=params)
    if kind == "gpu":
        only("index", "pci_bus_id")
        return PersistenceMode(host, nvml, int(need("index", _IRQ)), need("pci_bus_id", _PCI))
    if kind == "irqbalance":
        only()
        return Irqbalance(host)
    if kind == "irq":
        for name, path in params.items():
            if not _IRQ.fullmatch(name) or path != f"/proc/irq/{name}/smp_affinity_list":
                raise ValueError(f"irq entry names a path outside /proc/irq: {path[:80]!r}")
        parts = id.split(".")
        if len(parts) != 3 or not _DEVICE.fullmatch(parts[1]):
            raise ValueError(f"irq entry has a bad id {id[:80]!r}")
        return IrqAffinity(host, parts[1], paths=params)
    # No generic "file" kind: a journal that could name any path would be a root file-write primitive.
    raise ValueError(f"unknown kind {kind[:40]!r}")
