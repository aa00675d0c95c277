"""Checks 10 and 12: the GPUs' PCIe links and clock throttling.

A link narrower than its maximum (x8 in an x16 slot: a riser, a dirty contact, a bifurcated slot) halves host
transfers at any load, so width is judged always. GPUs drop to PCIe Gen1 when idle to save power, so a lower
generation is judged only while the GPU is busy. Throttle reasons are sampled twice over a short window
(SAMPLE_GAP_S, skipped when every GPU is idle); the idle reason and the software power cap under load are
normal, hardware slowdown, thermal and power-brake slowdowns are not.
"""

from __future__ import annotations

from typing import Any, Optional

from vllm_nodeagent.checks.base import CheckResult, Probe, Registered
from vllm_nodeagent.checks.status import Status, worst
from vllm_nodeagent.nvml import Nvml, NvmlCallError

BUSY_PERCENT = 30  # utilization from which a downshifted generation means something
SAMPLE_GAP_S = 0.05  # one gap for all GPUs: doctor stays fast
IDLE, SW_POWER_CAP, HW_SLOWDOWN = 0x1, 0x4, 0x8
SW_THERMAL, HW_THERMAL, HW_POWER_BRAKE = 0x20, 0x40, 0x80
REASONS = {
    SW_POWER_CAP: "SW power cap",
    HW_SLOWDOWN: "HW slowdown",
    SW_THERMAL: "SW thermal slowdown",
    HW_THERMAL: "HW thermal slowdown",
    HW_POWER_BRAKE: "HW power brake",
}
HARDWARE = HW_SLOWDOWN | HW_THERMAL | HW_POWER_BRAKE


def _get(nvml: Nvml, bus: str, fn: str) -> Any:
    try:
        return nvml.device_get(bus, fn)
    except NvmlCallError:
        return None


def _sysfs_int(probe: Probe, bus: str, attr: str) -> Optional[int]:
    text = (probe.host.read_or(f"/sys/bus/pci/devices/{bus}/{attr}") or "").strip()
    return int(text) if text.isdigit() else None


def link_state(probe: Probe, bus: str) -> tuple[Status, str]:
    """(status, what) of one GPU's link."""
    nvml = probe.nvml
    q = (lambda fn: _get(nvml, bus, fn)) if nvml is not None else (lambda fn: None)
    width, max_width = q("nvmlDeviceGetCurrPcieLinkWidth"), q("nvmlDeviceGetMaxPcieLinkWidth")
    if width is None or max_width is None:  # no NVML answer: the kernel knows the width too
        width, max_width = _sysfs_int(probe, bus, "current_link_width"), _sysfs_int(probe, bus, "max_link_width")
    if width is None or max_width is None:
        return Status.SKIP, "link width not reported"
    gen, max_gen = q("nvmlDeviceGetCurrPcieLinkGeneration"), q("nvmlDeviceGetMaxPcieLinkGeneration")
    util = q("nvmlDeviceGetUtilizationRates")
    pct = int(util.gpu) if util is not None else 0
    busy = pct >= BUSY_PERCENT
    shown = f"x{width}/x{max_width}" + (f" Gen{gen}/Gen{max_gen}" if gen is not None and max_gen else "")
    if int(width) < int(max_width):
        return Status.WARN, f"{shown}: narrower than the link can be"
    if gen is not None and max_gen is not None and int(gen) < int(max_gen):
        if busy:
            return Status.WARN, f"{shown} at {pct}% busy: running below its generation"
        return Status.PASS, f"{shown} (idle: a lower generation saves power)"
    return Status.PASS, shown


def pcie_check(probe: Probe) -> CheckResult:
    per = {g.index: link_state(probe, g.pci_bus_id) for g in probe.topo.gpus}
    status = worst([s for s, _ in per.values()])
    if not per:
        return CheckResult("gpu.pcie_link", Status.SKIP, None, None, "", "no GPU")
    bad = [f"GPU{i}: {w}" for i, (s, w) in per.items() if s == Status.WARN]
    first = next(iter(per.values()))[1]
    current = (
        "; ".join(bad)
        if bad
        else (
            f"all {len(per)}: {first}"
            if len({w for _, w in per.values()}) == 1
            else "; ".join(f"GPU{i}: {w}" for i, (_, w) in per.items())
        )
    )
    return CheckResult(
        "gpu.pcie_link",
        status,
        current,
        "full width; full generation under load",
        "reseat the GPU or riser, check the slot's bifurcation in the BIOS" if status == Status.WARN else "",
    )


def reasons(nvml: Nvml, bus: str) -> Optional[int]:
    for fn in ("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons"):
        value = _get(nvml, bus, fn)
        if value is not None:
            return int(value)
    return None


def judge_reasons(samples: list[int]) -> tuple[Status, str]:
    """(status, what) from throttle-reason samples of one GPU."""
    seen = 0
    for s in samples:
        seen |= s
    always_hw = HARDWARE
    for s in samples:
        always_hw &= s
    named = [name for bit, name in REASONS.items() if seen & bit]
    if seen & HARDWARE:
        return (Status.FAIL if always_hw else Status.WARN), ", ".join(named)
    if seen & SW_THERMAL:
        return Status.WARN, ", ".join(named)
    if all(s & IDLE for s in samples):
        return Status.PASS, "idle"
    return Status.PASS, ", ".join(named) or "none"


def throttle_check(probe: Probe) -> CheckResult:
    cid = "gpu.throttle"
    nvml = probe.nvml
    if nvml is None or not probe.topo.gpus:
        return CheckResult(cid, Status.SKIP, None, None, "", "no GPU" if not probe.topo.gpus else "NVML unavailable")
    first = {g.index: reasons(nvml, g.pci_bus_id) for g in probe.topo.gpus}
    if all(v is None for v in first.values()):
        return CheckResult(cid, Status.SKIP, None, None, "", "throttle reasons not reported")
    # Every GPU idle: nothing can be throttling work, so no window (doctor stays fast on an idle node).
    window = not all(v is None or v & IDLE for v in first.values())
    if window:
        probe.sleep(SAMPLE_GAP_S)
    per: dict[int, tuple[Status, str]] = {}
    for g in probe.topo.gpus:
        a = first[g.index]
        b = reasons(nvml, g.pci_bus_id) if window else None
        if a is not None:
            per[g.index] = judge_reasons([a] if b is None else [a, b])
    status = worst([s for s, _ in per.values()])
    bad = [f"GPU{i}: {w}" for i, (s, w) in per.items() if s != Status.PASS]
    current = "; ".join(bad) or ", ".join(sorted({w for _, w in per.values()}))
    want = "no hardware, thermal or power-brake slowdown"
    hint = {
        Status.FAIL: "check cooling, power cables and PSU (nvidia-smi -q -d PERFORMANCE); drain until fixed",
        Status.WARN: "watch it: nvidia-smi -q -d PERFORMANCE,TEMPERATURE",
    }.get(status, "")
    return CheckResult(cid, status, current, want, hint)


def checks(probe: Probe) -> list[CheckResult]:
    if not probe.topo.gpus:
        return []  # a host without GPUs has no GPU checks
    return [pcie_check(probe), throttle_check(probe)]


CHECKS = Registered(("gpu.pcie_link", "gpu.throttle"), checks)
