"""The CPU affinity of GPU and NIC interrupts: pinned to the CPUs of the device's NUMA node."""

from __future__ import annotations

import re

from vllm_nodeagent.host import Host
from vllm_nodeagent.host.parse import ParseError, format_cpulist, parse_cpulist, parse_interrupts_for
from vllm_nodeagent.settings.base import (
    MAX_MEMBERS,
    BuildInputs,
    Family,
    MultiFileTunable,
    NotApplicable,
    Tunable,
    TunableError,
    only_params,
    param,
)


def device_irqs(host: Host, pci_bus_id: str, names: tuple[str, ...] = ()) -> list[int]:
    """MSI/MSI-X vectors from sysfs; legacy INTx devices are found by name in /proc/interrupts."""
    msi = [int(n) for n in host.listdir(f"/sys/bus/pci/devices/{pci_bus_id}/msi_irqs") if n.isdigit()]
    if msi:
        return sorted(msi)
    irq_line = host.read_or(f"/sys/bus/pci/devices/{pci_bus_id}/irq")
    if irq_line and irq_line.isdigit() and int(irq_line) > 0:
        return [int(irq_line)]
    return parse_interrupts_for(host.read_or("/proc/interrupts", "") or "", (pci_bus_id, *names))


class IrqAffinity(MultiFileTunable):
    """A device's interrupts pinned to its NUMA node's CPUs. Compliant when every IRQ stays inside them."""

    family = "irq"

    def __init__(self, host: Host, device: str, irqs: list[int], local_cpus: list[int] | None = None) -> None:
        paths = {str(n): irq_affinity_path(n) for n in irqs}
        super().__init__(host, f"irq.{device}.affinity", paths, format_cpulist(local_cpus or []))
        self.device = device
        self.irqs = sorted(irqs)
        self.local = set(local_cpus or [])

    def params(self) -> dict[str, str]:
        return {"device": self.device, "irqs": " ".join(str(n) for n in self.irqs)}

    def member_compliant(self, value: str) -> bool:
        try:
            cpus = set(parse_cpulist(value))
        except ParseError:
            return False
        return bool(cpus) and cpus <= self.local

    def read(self) -> str:
        if not self.paths:
            raise NotApplicable("device has no interrupts listed")
        return super().read()

    def write(self, value: str) -> None:
        try:
            super().write(value)
        except TunableError as exc:
            if "EIO" in str(exc):
                # Kernel-managed vectors (NVMe, virtio queues) refuse affinity changes with EIO by design.
                raise TunableError(f"{exc} (kernel-managed IRQ affinity cannot be changed)") from None
            raise


def irq_affinity_path(irq: int) -> str:
    return f"/proc/irq/{irq}/smp_affinity_list"


def build(inputs: BuildInputs) -> list[Tunable]:
    irq, topology, host = inputs.config.irq, inputs.topology, inputs.host
    if irq is None or not irq.affinity:
        return []
    out: list[Tunable] = [
        IrqAffinity(host, f"gpu{g.index}", device_irqs(host, g.pci_bus_id), g.local_cpus) for g in topology.gpus
    ]
    for nic in topology.nics:
        node = topology.node(nic.numa_node)
        if node is not None:
            out.append(IrqAffinity(host, nic.name, device_irqs(host, nic.pci_bus_id, (nic.name,)), node.cpus))
    return out


_DEVICE = re.compile(r"[A-Za-z0-9_\-:]{1,64}")
_IRQS = re.compile(rf"[0-9]{{1,6}}( [0-9]{{1,6}}){{0,{MAX_MEMBERS - 1}}}")


def rebuild(host: Host, nvml: object, params: dict[str, str]) -> Tunable:
    only_params(params, "device", "irqs")
    irqs = [int(n) for n in param(params, "irqs", _IRQS).split()]
    return IrqAffinity(host, param(params, "device", _DEVICE), irqs)


FAMILY = Family(IrqAffinity.family, build, rebuild)
