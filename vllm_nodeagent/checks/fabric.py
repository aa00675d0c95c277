"""Check 3: the NVSwitch fabric (HGX/DGX boards): fabric state from NVML, Fabric Manager running, and its
version equal to the driver's. Without a registered fabric every CUDA call fails with error 802 ("system not
yet initialized"); a Fabric Manager of another version than the driver refuses to start. Skipped where NVML
reports no fabric support (PCIe boards, NVLink bridges).
"""

from __future__ import annotations

import re
from typing import Optional

from vllm_nodeagent.checks.base import CheckResult, Probe, Registered
from vllm_nodeagent.checks.status import Status
from vllm_nodeagent.nvml import NvmlCallError

STATES = {0: "not supported", 1: "not started", 2: "in progress", 3: "completed"}
FM_COMM = "nv-fabricmanager"
_DPKG_FM = re.compile(r"^Package: (nvidia-fabricmanager[\w.-]*)\n(?:.+\n)*?Version: (\S+)", re.M)


def fm_version(probe: Probe) -> Optional[str]:
    """Fabric Manager's package version from dpkg's database ("580.159.04-1" -> "580.159.04"); None if not there."""
    text = probe.host.read_or("/var/lib/dpkg/status", "") or ""
    for block in text.split("\n\n"):
        m = _DPKG_FM.search(block + "\n")
        if m and "Status: install ok installed" in block:
            return m.group(2).split(":")[-1].split("-")[0]
    return None


def checks(probe: Probe) -> list[CheckResult]:
    nvml = probe.nvml
    if nvml is None or not probe.topo.gpus:
        return [] if not probe.topo.gpus else [CheckResult("fabric", Status.SKIP, None, None, "", "NVML unavailable")]
    states: dict[int, tuple[int, int]] = {}
    for g in probe.topo.gpus:
        try:
            states[g.index] = nvml.fabric_info(g.pci_bus_id)
        except NvmlCallError:
            continue
    if not states or all(s == 0 for s, _ in states.values()):
        return [CheckResult("fabric", Status.SKIP, None, None, "", "no NVSwitch fabric (PCIe board or NVLink bridges)")]
    bad = {i: (s, st) for i, (s, st) in states.items() if s != 3 or st != 0}
    want = "completed, status success"
    if bad:
        shown = "; ".join(f"GPU{i}: {STATES.get(s, s)}, status {st}" for i, (s, st) in bad.items())
        state = CheckResult(
            "fabric.state",
            Status.FAIL if any(s != 2 for s, _ in bad.values()) else Status.WARN,
            shown,
            want,
            "systemctl start nvidia-fabricmanager; journalctl -u nvidia-fabricmanager",
            "CUDA fails with error 802 until the fabric is registered",
        )
    else:
        state = CheckResult("fabric.state", Status.PASS, f"{len(states)} GPU(s) completed", want)
    pid = probe.running(FM_COMM)
    try:
        driver = nvml.driver_version()
    except NvmlCallError:
        driver = ""
    version = fm_version(probe)
    shown = f"{FM_COMM} {'pid ' + str(pid) if pid else 'not running'}, version {version or 'unknown'}"
    want_fm = f"running, version {driver or 'of the driver'}"
    if pid is None:
        manager = CheckResult(
            "fabric.manager", Status.FAIL, shown, want_fm, "systemctl enable --now nvidia-fabricmanager"
        )
    elif version and driver and version != driver:
        manager = CheckResult(
            "fabric.manager",
            Status.FAIL,
            shown,
            want_fm,
            f"install nvidia-fabricmanager {driver} (it must match the driver exactly)",
        )
    else:
        manager = CheckResult(
            "fabric.manager", Status.PASS, shown, want_fm, "", "" if version else "version not in dpkg"
        )
    return [state, manager]


CHECKS = Registered(("fabric", "fabric.state", "fabric.manager"), checks)
