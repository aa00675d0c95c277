"""Check 1: the GPU-to-GPU path over PCIe: NVML's P2P status and common ancestor per pair, ACS on the bridges
between the GPUs, and the IOMMU mode.

ACS request/completion redirect or egress control on a bridge sends peer-to-peer traffic up to the root
complex: slow at best, NCCL hangs or corrupt data at worst (NCCL's troubleshooting guide asks for ACS off).
A translating IOMMU (DMA/DMA-FQ domains) breaks or slows P2P the same way; passthrough (identity) does not.
Skipped with one GPU, or where NVLink/NVSwitch carries every pair's traffic.
"""

from __future__ import annotations

import re
from typing import Optional

from vllm_nodeagent.checks.base import CheckResult, Probe, Registered
from vllm_nodeagent.checks.status import Status
from vllm_nodeagent.host import paths
from vllm_nodeagent.nvml import NvmlCallError

BDF = re.compile(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]")
EXT_CAP_START, ACS_CAP_ID = 0x100, 0x000D
ACS_RR, ACS_CR, ACS_EC = 1 << 2, 1 << 3, 1 << 5  # P2P request redirect, completion redirect, egress control
P2P_STATUS = {
    0: "OK",
    1: "chipset not supported",
    2: "GPU not supported",
    3: "IOH topology not supported",
    4: "disabled by regkey",
    5: "not supported",
    6: "unknown",
}


def acs_control(config: bytes) -> Optional[int]:
    """The ACS Control register from a device's config space; None when the extended space is not readable
    (unprivileged reads stop at 64 bytes) or the device has no ACS capability (then it redirects nothing: 0)."""
    if len(config) < EXT_CAP_START + 8:
        return None
    off, hops = EXT_CAP_START, 0
    while off and EXT_CAP_START <= off <= len(config) - 8 and hops < 64:
        header = int.from_bytes(config[off : off + 4], "little")
        if header in (0, 0xFFFFFFFF):
            return 0
        if header & 0xFFFF == ACS_CAP_ID:
            return int.from_bytes(config[off + 6 : off + 8], "little")
        off, hops = header >> 20, hops + 1
    return 0


def upstream_bridges(probe: Probe, bus: str) -> dict[str, str]:
    """The PCI bridges between a device and its root complex (address -> sysfs directory), from its sysfs path."""
    parts = probe.host.realpath(f"/sys/bus/pci/devices/{bus}").split("/")
    return {p: "/".join(parts[: i + 1]) for i, p in enumerate(parts) if BDF.fullmatch(p) and p != bus}


def pcie_pairs(probe: Probe) -> list[tuple[int, int, str]]:
    """(i, j, label) of GPU pairs whose traffic crosses PCIe (not NV#); labels from NVML's link matrix."""
    gpus = probe.topo.gpus
    links = probe.topo.gpu_links
    out = []
    for a in range(len(gpus)):
        for b in range(a + 1, len(gpus)):
            label = links[a][b] if len(links) == len(gpus) else "PCIe"
            if not label.startswith("NV"):
                out.append((a, b, label))
    return out


def status_check(probe: Probe, pairs: list[tuple[int, int, str]]) -> CheckResult:
    cid = "p2p.status"
    nvml = probe.nvml
    if nvml is None:
        return CheckResult(cid, Status.SKIP, None, "OK", "", "NVML unavailable")
    gpus = probe.topo.gpus
    bad, known = [], 0
    for a, b, label in pairs:
        try:
            s = int(nvml.pair_get(gpus[a].pci_bus_id, gpus[b].pci_bus_id, "nvmlDeviceGetP2PStatus", 0))
        except NvmlCallError:
            continue
        known += 1
        if s != 0:
            bad.append(f"GPU{gpus[a].index}-GPU{gpus[b].index} ({label}): {P2P_STATUS.get(s, s)}")
    if not known:
        return CheckResult(cid, Status.SKIP, None, "OK", "", "P2P status not reported")
    if bad:
        return CheckResult(
            cid,
            Status.WARN,
            "; ".join(bad[:4]) + (f"; +{len(bad) - 4} more" if len(bad) > 4 else ""),
            "OK",
            "check ACS/IOMMU below; nvidia-smi topo -p2p r",
            "NCCL falls back to copies through host memory: slower tensor parallelism",
        )
    return CheckResult(cid, Status.PASS, f"{known} PCIe pair(s) OK", "OK")


def acs_check(probe: Probe, pairs: list[tuple[int, int, str]]) -> CheckResult:
    cid = "p2p.acs"
    gpus = probe.topo.gpus
    involved = {i for a, b, _ in pairs for i in (a, b)}
    bridges: dict[str, str] = {}
    for i in involved:
        bridges.update(upstream_bridges(probe, gpus[i].pci_bus_id))
    redirecting, unreadable = [], 0
    for br, directory in sorted(bridges.items()):
        try:
            ctrl = acs_control(paths.read_capped(probe.host.path(f"{directory}/config"), 4096))
        except OSError:
            ctrl = None
        if ctrl is None:
            unreadable += 1
        elif ctrl & (ACS_RR | ACS_CR | ACS_EC):
            flags = [
                n for bit, n in ((ACS_RR, "ReqRedir"), (ACS_CR, "CmpltRedir"), (ACS_EC, "EgressCtrl")) if ctrl & bit
            ]
            redirecting.append(f"{br}: {'+'.join(flags)}")
    want = "no ACS redirect between GPUs"
    if not bridges:
        return CheckResult(cid, Status.PASS, "no bridge between the GPUs", want)
    if redirecting:
        return CheckResult(
            cid,
            Status.WARN,
            "; ".join(redirecting),
            want,
            "disable ACS in the BIOS (or setpci -s BRIDGE ECAP_ACS+6.w=0 at boot)",
            "peer-to-peer traffic is redirected through the root complex: NCCL hangs or slows",
        )
    if unreadable == len(bridges):
        return CheckResult(cid, Status.SKIP, None, want, "", "bridge config space unreadable (run doctor as root)")
    return CheckResult(cid, Status.PASS, f"{len(bridges)} bridge(s), none redirect", want)


def iommu_check(probe: Probe) -> CheckResult:
    cid = "p2p.iommu"
    cmdline = " ".join(w for w in (probe.host.read_or("/proc/cmdline", "") or "").split() if "iommu" in w)
    types = {}
    for g in probe.topo.gpus:
        t = probe.host.read_or(f"/sys/bus/pci/devices/{g.pci_bus_id}/iommu_group/type")
        types[g.index] = (t or "").strip() or "none"
    translated = {i: t for i, t in types.items() if t.startswith("DMA")}
    shown = ", ".join(sorted(set(types.values())))
    current = f"{shown}" + (f" (cmdline: {cmdline})" if cmdline else "")
    want = "passthrough (identity) or off"
    if translated:
        return CheckResult(
            cid,
            Status.WARN,
            current,
            want,
            "boot with iommu=pt (intel_iommu=on iommu=pt on Intel)",
            "a translating IOMMU breaks or slows GPU peer-to-peer over PCIe",
        )
    return CheckResult(cid, Status.PASS, current, want)


def checks(probe: Probe) -> list[CheckResult]:
    gpus = probe.topo.gpus
    if len(gpus) < 2:
        return [] if not gpus else [CheckResult("p2p", Status.SKIP, None, None, "", "one GPU: no GPU-to-GPU traffic")]
    pairs = pcie_pairs(probe)
    if not pairs:
        return [CheckResult("p2p", Status.SKIP, "NVLink", None, "", "NVLink/NVSwitch carries every GPU pair's traffic")]
    return [status_check(probe, pairs), acs_check(probe, pairs), iommu_check(probe)]


CHECKS = Registered(("p2p.status", "p2p.acs", "p2p.iommu"), checks)
