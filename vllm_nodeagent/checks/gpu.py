"""Checks 4 and 6: GPU memory health, and what else holds the GPUs vLLM will use.

4: pending or failed row remaps, uncorrectable ECC errors since the driver loaded, and the driver's
recommended recovery action (NVML field GPU_RECOVERY_ACTION). Corrected errors are shown, never failed on:
ECC corrected them. 6: compute processes that are not vLLM's (or memory used with no visible process: another
container), the compute mode, and a MIG mode change waiting for a GPU reset.
"""

from __future__ import annotations

from typing import Any, Optional

from vllm_nodeagent.checks.base import FAIL, PASS, SKIP, WARN, CheckResult, Probe, descendants, planned_gpus, worst
from vllm_nodeagent.nvml import Nvml, NvmlCallError

GIB = 1 << 30
FIELD_RECOVERY_ACTION = 230  # NVML_FI_DEV_GET_GPU_RECOVERY_ACTION
RECOVERY_ACTIONS = {
    0: "none",
    1: "GPU reset",
    2: "node reboot",
    3: "drain P2P",
    4: "drain and reset",
    5: "recover IMEX domain",
    6: "bus reset",
    7: "system reboot",
}
ECC_UNCORRECTED, ECC_CORRECTED, ECC_VOLATILE = 1, 0, 0
COMPUTE_MODES = {0: "Default", 1: "Exclusive_Thread", 2: "Prohibited", 3: "Exclusive_Process"}
UNEXPLAINED_MEMORY = 1 * GIB  # used memory no visible process accounts for (idle GPUs report a few MiB)


def _get(nvml: Nvml, bus: str, fn: str, *args: object) -> Any:
    try:
        return nvml.device_get(bus, fn, *args)
    except NvmlCallError:
        return None  # "Not Supported" on this board (ECC off, no row remapper, no MIG): judged as absent


def memory_health(nvml: Nvml, bus: str) -> tuple[str, str]:
    """(status, what) of one GPU's memory."""
    rows = _get(nvml, bus, "nvmlDeviceGetRemappedRows")
    unc = _get(nvml, bus, "nvmlDeviceGetTotalEccErrors", ECC_UNCORRECTED, ECC_VOLATILE)
    corr = _get(nvml, bus, "nvmlDeviceGetTotalEccErrors", ECC_CORRECTED, ECC_VOLATILE)
    try:
        action = nvml.field_value(bus, FIELD_RECOVERY_ACTION)
    except NvmlCallError:
        action = None
    if rows is None and unc is None and action is None:
        return SKIP, "no ECC/row-remap reporting"
    problems: list[tuple[str, str]] = []
    if isinstance(rows, tuple):
        _corr_rows, unc_rows, pending, failed = (int(x) for x in rows)
        if failed:
            problems.append((FAIL, "row remapping failed (no spare rows: replace the GPU)"))
        elif pending:
            problems.append((WARN, f"row remap pending ({unc_rows} uncorrectable row(s)): reset the GPU"))
    if isinstance(unc, int) and unc > 0:
        problems.append((FAIL, f"{unc} uncorrectable ECC error(s) since the driver loaded"))
    if action:
        problems.append((WARN if action == 3 else FAIL, f"driver asks for: {RECOVERY_ACTIONS.get(action, action)}"))
    note = f", {corr} corrected (not a failure)" if isinstance(corr, int) and corr else ""
    if not problems:
        return PASS, "ok" + note
    return worst([s for s, _ in problems]), "; ".join(w for _, w in problems) + note


def memory_health_check(probe: Probe, nvml: Nvml) -> CheckResult:
    per = {g.index: memory_health(nvml, g.pci_bus_id) for g in probe.topo.gpus}
    status = worst([s for s, _ in per.values()])
    current = "; ".join(f"GPU{i}: {w}" for i, (s, w) in per.items() if s != PASS) or f"{len(per)} GPU(s) ok"
    hint = {
        FAIL: "drain the node; nvidia-smi -q -d ROW_REMAPPER,ECC; reset the GPU or RMA it",
        WARN: "drain, then reset the GPU (nvidia-smi -r) so the pending remap takes effect",
    }.get(status, "")
    return CheckResult("gpu.memory_health", status, current, "no pending remaps, no uncorrectable ECC", hint)


def foreign_check(probe: Probe, nvml: Nvml) -> CheckResult:
    cid = "gpu.foreign_processes"
    gpus = planned_gpus(probe)
    vllm = probe.vllm_pid()
    ours = descendants(probe, vllm) if vllm is not None else set()
    problems: list[str] = []
    statuses: list[str] = []
    for g in gpus:
        procs = _get(nvml, g.pci_bus_id, "nvmlDeviceGetComputeRunningProcesses")
        mem = _get(nvml, g.pci_bus_id, "nvmlDeviceGetMemoryInfo")
        if procs is None and mem is None:
            statuses.append(SKIP)
            continue
        foreign = [p for p in procs or [] if int(p.pid) not in ours]
        accounted = sum(int(p.usedGpuMemory or 0) for p in procs or [])
        used = int(mem.used) if mem is not None else 0
        if foreign:
            names = ", ".join(f"{int(p.pid)} {probe.processes().get(int(p.pid), '?')}" for p in foreign[:3])
            problems.append(f"GPU{g.index}: {names}")
            statuses.append(FAIL)
        elif used - accounted > UNEXPLAINED_MEMORY and not (ours and procs):
            problems.append(f"GPU{g.index}: {used / GIB:.1f} GiB used, no visible process (another container?)")
            statuses.append(WARN)
        else:
            statuses.append(PASS)
    status = worst(statuses)
    want = "only vLLM's processes on the planned GPUs"
    if status in (PASS, SKIP):
        return CheckResult(cid, status, f"{len(gpus)} planned GPU(s) free" if status == PASS else None, want)
    return CheckResult(
        cid,
        status,
        "; ".join(problems),
        want,
        "stop the leftover processes (nvidia-smi --query-compute-apps=pid,name --format=csv)",
        "vLLM sizes its KV cache from free memory and fails to start when others hold it",
    )


def mode_checks(probe: Probe, nvml: Nvml) -> list[CheckResult]:
    modes: dict[int, Optional[int]] = {}
    migs: dict[int, Optional[list[int]]] = {}
    for g in planned_gpus(probe):
        m = _get(nvml, g.pci_bus_id, "nvmlDeviceGetComputeMode")
        modes[g.index] = int(m) if isinstance(m, int) else None
        mig = _get(nvml, g.pci_bus_id, "nvmlDeviceGetMigMode")
        migs[g.index] = [int(x) for x in mig] if isinstance(mig, (list, tuple)) else None
    known = {i: m for i, m in modes.items() if m is not None}
    bad = {i: m for i, m in known.items() if m != 0}
    current = ", ".join(f"GPU{i}: {COMPUTE_MODES.get(m, m)}" for i, m in bad.items()) or "Default"
    if not known:
        compute = CheckResult("gpu.compute_mode", SKIP, None, "Default", "", "not reported")
    elif bad:
        status = FAIL if 2 in bad.values() else WARN
        compute = CheckResult(
            "gpu.compute_mode",
            status,
            current,
            "Default",
            "nvidia-smi -c DEFAULT -i <gpu>",
            "Prohibited: no CUDA context at all; Exclusive: one process per GPU",
        )
    else:
        compute = CheckResult("gpu.compute_mode", PASS, current, "Default")
    known_mig = {i: m for i, m in migs.items() if m is not None}
    pending = {i: m for i, m in known_mig.items() if m[0] != m[1]}
    enabled = {i: m for i, m in known_mig.items() if m[0] == 1 and m[0] == m[1]}
    if not known_mig:
        mig_r = CheckResult("gpu.mig", SKIP, None, "disabled, nothing pending", "", "not MIG-capable")
    elif pending:
        mig_r = CheckResult(
            "gpu.mig",
            WARN,
            ", ".join(f"GPU{i}: {m[0]}->{m[1]} pending" for i, m in pending.items()),
            "disabled, nothing pending",
            "drain, then reset the GPU (nvidia-smi -r) to apply the MIG change",
        )
    elif enabled:
        mig_r = CheckResult(
            "gpu.mig",
            WARN,
            ", ".join(f"GPU{i}: enabled" for i in enabled),
            "disabled",
            "nvidia-smi -mig 0 -i <gpu>, or give vLLM MIG device UUIDs",
            "a MIG-enabled GPU offers only its MIG instances to CUDA",
        )
    else:
        mig_r = CheckResult("gpu.mig", PASS, "disabled", "disabled, nothing pending")
    return [compute, mig_r]


def checks(probe: Probe) -> list[CheckResult]:
    if not probe.topo.gpus:
        return []  # a host without GPUs has no GPU checks (as for the gpu.* settings)
    if probe.nvml is None:
        return [
            CheckResult(cid, SKIP, None, None, "", "NVML unavailable")
            for cid in ("gpu.memory_health", "gpu.foreign_processes", "gpu.compute_mode", "gpu.mig")
        ]
    return [memory_health_check(probe, probe.nvml), foreign_check(probe, probe.nvml), *mode_checks(probe, probe.nvml)]
