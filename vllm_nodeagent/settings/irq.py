"""irqbalance (a systemd unit) and the CPU affinity of GPU and NIC interrupts."""

from __future__ import annotations

import shutil
from typing import Optional

from vllm_nodeagent import subp
from vllm_nodeagent.host import Host
from vllm_nodeagent.parse import ParseError, format_cpulist, parse_cpulist, parse_interrupts_for
from vllm_nodeagent.settings.base import MultiFileTunable, NotApplicable, TunableError
from vllm_nodeagent.subp import CommandError, Result, without_notify

SYSTEMCTL_TIMEOUT_S = 30


class Irqbalance:
    """The irqbalance unit: "stop" wants it inactive and disabled; "keep" expects it active and enabled.

    "keep" only reports: an agent that starts a service the operator stopped would surprise them.
    """

    kind = "irqbalance"
    unit = "irqbalance.service"

    def __init__(self, host: Host, policy: str = "stop") -> None:
        self.host = host
        self.id = "irqbalance"
        self.policy = policy
        self.owner: Optional[str] = 'the operator ([irq] irqbalance = "keep": reported, never changed)' \
            if policy == "keep" else None

    def params(self) -> dict[str, str]:
        return {}

    def _systemctl(self, *args: str) -> Result:
        exe = shutil.which("systemctl")
        if exe is None:
            raise NotApplicable("systemctl not found")
        # SYSTEMCTL_SKIP_SYSV: Debian's `systemctl disable` also runs update-rc.d, which writes /etc/rc?.d and
        # fails under the unit's ProtectSystem=strict; on a systemd host those links are unused (found in the VM
        # bed). NOTIFY_SOCKET is dropped: only the agent itself may talk to systemd's notify socket.
        env = without_notify()
        env["SYSTEMCTL_SKIP_SYSV"] = "1"
        try:
            return subp.run([exe, *args], SYSTEMCTL_TIMEOUT_S, env)
        except CommandError as exc:  # a hung systemd fails this setting, not the daemon
            raise TunableError(str(exc)) from None

    def read(self) -> str:
        # Only the real host's systemd can answer; a --root tree has no service manager.
        if not self.host.is_real:
            raise NotApplicable("no service manager under --root")
        if not self.host.exists("/run/systemd/system"):
            raise NotApplicable("systemd is not the service manager here")
        active = self._systemctl("is-active", self.unit).stdout.strip()
        enabled = self._systemctl("is-enabled", self.unit).stdout.strip()
        if enabled in ("", "not-found") or "No such file" in enabled:
            raise NotApplicable("irqbalance is not installed")
        return f"{active}/{enabled}"

    def desired(self) -> str:
        return "inactive/disabled" if self.policy == "stop" else "active/enabled"

    def compliant(self, current: str) -> bool:
        active, _, enabled = current.partition("/")
        if self.policy == "stop":
            return active in ("inactive", "failed") and enabled in ("disabled", "masked")
        return active == "active" and enabled == "enabled"

    def target(self, current: str) -> str:
        return self.desired()

    def write(self, value: str) -> None:
        active, _, enabled = value.partition("/")
        steps: list[tuple[str, ...]] = []
        steps.append(("enable",) if enabled == "enabled" else ("disable",) if enabled == "disabled" else ())
        steps.append(("start",) if active == "active" else ("stop",))
        for step in steps:
            if not step:
                continue
            res = self._systemctl(*step, self.unit)
            if res.returncode != 0:
                raise TunableError(f"systemctl {step[0]} {self.unit}: {res.stderr.strip() or res.returncode}")

    def hint(self) -> str:
        if self.policy == "stop":
            return "systemctl disable --now irqbalance (needed for irq affinity pinning to stick)"
        return "systemctl enable --now irqbalance"

    def note(self, current: str) -> str:
        return ""

    def invalid(self, current: str) -> str:
        return ""


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

    kind = "irq"

    def __init__(self, host: Host, device: str, irqs: list[int] | None = None, local_cpus: list[int] | None = None,
                 paths: dict[str, str] | None = None) -> None:
        if paths is None:
            paths = {str(n): f"/proc/irq/{n}/smp_affinity_list" for n in (irqs or [])}
        super().__init__(host, f"irq.{device}.affinity", paths, format_cpulist(local_cpus or []))
        self.local = set(local_cpus or [])

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
