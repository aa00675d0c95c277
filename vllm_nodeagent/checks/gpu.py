"""Checks 4 and 6: GPU memory health, and what else holds the GPUs vLLM will use.

4: pending or failed row remaps, uncorrectable ECC errors since the driver loaded, and the driver's
recommended recovery action (NVML field GPU_RECOVERY_ACTION). Corrected errors are shown, never failed on:
ECC corrected them. 6: compute processes that are not vLLM's (or memory used with no visible process: another
container), the compute mode, and a MIG mode change waiting for a GPU reset.

Issue 27: the GPU's own tuning, judged whether or not [gpu] manages it: a power limit below the board's default
and application clocks below the top are WARNs (an earlier job or a provider left them); the ECC report (mode,
pending mode, uncorrected counts) never leads to a change: turning ECC off needs a GPU reset and loses the
detection of memory errors, which serving needs.
"""

from __future__ import annotations

from typing import Any, Optional

from vllm_nodeagent.checks.base import CheckResult, Probe, Registered, descendants, planned_gpus
from vllm_nodeagent.checks.status import Status, worst
from vllm_nodeagent.nvml import Nvml, NvmlCallError
from vllm_nodeagent.settings.gpu_clocks import show as show_clocks
from vllm_nodeagent.settings.gpu_clocks import top
from vllm_nodeagent.settings.gpu_power import watts

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
ECC_UNCORRECTED, ECC_CORRECTED, ECC_VOLATILE, ECC_AGGREGATE = 1, 0, 0, 1
FIELD_POWER_REQUESTED_LIMIT = 192  # NVML_FI_DEV_POWER_REQUESTED_LIMIT: what was asked, before other limiters
REASON_CLOCK_SETTING = 0x2  # nvmlClocksEventReasonApplicationsClocksSetting: also set by locked clocks
COMPUTE_MODES = {0: "Default", 1: "Exclusive_Thread", 2: "Prohibited", 3: "Exclusive_Process"}
UNEXPLAINED_MEMORY = 1 * GIB  # used memory no visible process accounts for (idle GPUs report a few MiB)


def _get(nvml: Nvml, bus: str, fn: str, *args: object) -> Any:
    try:
        return nvml.device_get(bus, fn, *args)
    except NvmlCallError:
        return None  # "Not Supported" on this board (ECC off, no row remapper, no MIG): judged as absent


def memory_health(nvml: Nvml, bus: str) -> tuple[Status, str]:
    """(status, what) of one GPU's memory."""
    rows = _get(nvml, bus, "nvmlDeviceGetRemappedRows")
    unc = _get(nvml, bus, "nvmlDeviceGetTotalEccErrors", ECC_UNCORRECTED, ECC_VOLATILE)
    corr = _get(nvml, bus, "nvmlDeviceGetTotalEccErrors", ECC_CORRECTED, ECC_VOLATILE)
    try:
        action = nvml.field_value(bus, FIELD_RECOVERY_ACTION)
    except NvmlCallError:
        action = None
    if rows is None and unc is None and action is None:
        return Status.SKIP, "no ECC/row-remap reporting"
    problems: list[tuple[Status, str]] = []
    if isinstance(rows, tuple):
        _corr_rows, unc_rows, pending, failed = (int(x) for x in rows)
        if failed:
            problems.append((Status.FAIL, "row remapping failed (no spare rows: replace the GPU)"))
        elif pending:
            problems.append((Status.WARN, f"row remap pending ({unc_rows} uncorrectable row(s)): reset the GPU"))
    if isinstance(unc, int) and unc > 0:
        problems.append((Status.FAIL, f"{unc} uncorrectable ECC error(s) since the driver loaded"))
    if action:
        problems.append(
            (Status.WARN if action == 3 else Status.FAIL, f"driver asks for: {RECOVERY_ACTIONS.get(action, action)}")
        )
    note = f", {corr} corrected (not a failure)" if isinstance(corr, int) and corr else ""
    if not problems:
        return Status.PASS, "ok" + note
    return worst([s for s, _ in problems]), "; ".join(w for _, w in problems) + note


def memory_health_check(probe: Probe, nvml: Nvml) -> CheckResult:
    per = {g.index: memory_health(nvml, g.pci_bus_id) for g in probe.topo.gpus}
    status = worst([s for s, _ in per.values()])
    current = "; ".join(f"GPU{i}: {w}" for i, (s, w) in per.items() if s != Status.PASS) or f"{len(per)} GPU(s) ok"
    hint = {
        Status.FAIL: "drain the node; nvidia-smi -q -d ROW_REMAPPER,ECC; reset the GPU or RMA it",
        Status.WARN: "drain, then reset the GPU (nvidia-smi -r) so the pending remap takes effect",
    }.get(status, "")
    return CheckResult("gpu.memory_health", status, current, "no pending remaps, no uncorrectable ECC", hint)


def foreign_check(probe: Probe, nvml: Nvml) -> CheckResult:
    cid = "gpu.foreign_processes"
    gpus = planned_gpus(probe)
    vllm = probe.vllm_pid()
    ours = descendants(probe, vllm) if vllm is not None else set()
    problems: list[str] = []
    statuses: list[Status] = []
    for g in gpus:
        procs = _get(nvml, g.pci_bus_id, "nvmlDeviceGetComputeRunningProcesses")
        mem = _get(nvml, g.pci_bus_id, "nvmlDeviceGetMemoryInfo")
        if procs is None and mem is None:
            statuses.append(Status.SKIP)
            continue
        foreign = [p for p in procs or [] if int(p.pid) not in ours]
        accounted = sum(int(p.usedGpuMemory or 0) for p in procs or [])
        used = int(mem.used) if mem is not None else 0
        if foreign:
            names = ", ".join(f"{int(p.pid)} {probe.processes().get(int(p.pid), '?')}" for p in foreign[:3])
            problems.append(f"GPU{g.index}: {names}")
            statuses.append(Status.FAIL)
        elif used - accounted > UNEXPLAINED_MEMORY and not (ours and procs):
            problems.append(f"GPU{g.index}: {used / GIB:.1f} GiB used, no visible process (another container?)")
            statuses.append(Status.WARN)
        else:
            statuses.append(Status.PASS)
    status = worst(statuses)
    want = "only vLLM's processes on the planned GPUs"
    if status in (Status.PASS, Status.SKIP):
        return CheckResult(cid, status, f"{len(gpus)} planned GPU(s) free" if status == Status.PASS else None, want)
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
        compute = CheckResult("gpu.compute_mode", Status.SKIP, None, "Default", "", "not reported")
    elif bad:
        status = Status.FAIL if 2 in bad.values() else Status.WARN
        compute = CheckResult(
            "gpu.compute_mode",
            status,
            current,
            "Default",
            "nvidia-smi -c DEFAULT -i <gpu>",
            "Prohibited: no CUDA context at all; Exclusive: one process per GPU",
        )
    else:
        compute = CheckResult("gpu.compute_mode", Status.PASS, current, "Default")
    known_mig = {i: m for i, m in migs.items() if m is not None}
    pending = {i: m for i, m in known_mig.items() if m[0] != m[1]}
    enabled = {i: m for i, m in known_mig.items() if m[0] == 1 and m[0] == m[1]}
    if not known_mig:
        mig_r = CheckResult("gpu.mig", Status.SKIP, None, "disabled, nothing pending", "", "not MIG-capable")
    elif pending:
        mig_r = CheckResult(
            "gpu.mig",
            Status.WARN,
            ", ".join(f"GPU{i}: {m[0]}->{m[1]} pending" for i, m in pending.items()),
            "disabled, nothing pending",
            "drain, then reset the GPU (nvidia-smi -r) to apply the MIG change",
        )
    elif enabled:
        mig_r = CheckResult(
            "gpu.mig",
            Status.WARN,
            ", ".join(f"GPU{i}: enabled" for i in enabled),
            "disabled",
            "nvidia-smi -mig 0 -i <gpu>, or give vLLM MIG device UUIDs",
            "a MIG-enabled GPU offers only its MIG instances to CUDA",
        )
    else:
        mig_r = CheckResult("gpu.mig", Status.PASS, "disabled", "disabled, nothing pending")
    return [compute, mig_r]


def summarise(per_gpu: dict[int, str]) -> str:
    """One value for all GPUs when they agree ("700 W on 8 GPU(s)"), else each GPU's."""
    values = set(per_gpu.values())
    if len(values) == 1:
        return f"{values.pop()} on {len(per_gpu)} GPU(s)"
    return "; ".join(f"GPU{i}: {v}" for i, v in per_gpu.items())


def power_check(probe: Probe, nvml: Nvml) -> CheckResult:
    cid, want = "gpu.power_limit", "at least the default limit"
    seen: dict[int, str] = {}
    low: list[str] = []
    for g in probe.topo.gpus:
        try:
            lim = nvml.power_limits(g.pci_bus_id)
        except NvmlCallError:
            continue
        seen[g.index] = f"{watts(lim.current)} (default {watts(lim.default)}, max {watts(lim.maximum)})"
        if lim.current < lim.default:
            try:
                requested = nvml.field_value(g.pci_bus_id, FIELD_POWER_REQUESTED_LIMIT)
            except NvmlCallError:
                requested = None
            source = (
                f"; {watts(requested)} requested: another limiter (a system or out-of-band cap) holds it lower"
                if requested is not None and requested != lim.current
                else ""
            )
            low.append(f"GPU{g.index}: {watts(lim.current)} below its default {watts(lim.default)}{source}")
    if not seen:
        return CheckResult(cid, Status.SKIP, None, want, "", "power limits not reported")
    if low:
        return CheckResult(
            cid,
            Status.WARN,
            "; ".join(low),
            want,
            '[gpu] power_limit = "default" (or "max"), or nvidia-smi -i <gpu> -pl <watts>',
            "a lowered limit clocks the GPU down under load (clocks event reason SW Power Cap)",
        )
    return CheckResult(cid, Status.PASS, summarise(seen), want)


def clocks_check(probe: Probe, nvml: Nvml) -> CheckResult:
    cid, want = "gpu.clocks", "application clocks at the top, no clock setting holding them"
    seen: dict[int, str] = {}
    low: list[str] = []
    for g in probe.topo.gpus:
        try:
            graphics, memory = nvml.applications_clocks(g.pci_bus_id)
            best = top(nvml.supported_clocks(g.pci_bus_id))
        except (NvmlCallError, ValueError):  # ValueError: an empty supported list
            continue
        seen[g.index] = show_clocks(graphics, memory)
        if (graphics, memory) != best and (graphics < best[0] or memory < best[1]):
            low.append(f"GPU{g.index}: {show_clocks(graphics, memory)} below the top {show_clocks(*best)}")
            continue
        reasons = _get(nvml, g.pci_bus_id, "nvmlDeviceGetCurrentClocksEventReasons")
        if isinstance(reasons, int) and reasons & REASON_CLOCK_SETTING:
            low.append(f"GPU{g.index}: held below its top by a clock setting (locked clocks: nvidia-smi -lgc)")
    if not seen:
        return CheckResult(cid, Status.SKIP, None, want, "", "application clocks not reported")
    if low:
        return CheckResult(
            cid,
            Status.WARN,
            "; ".join(low),
            want,
            '[gpu] clocks = "max", or nvidia-smi -i <gpu> -rac; locked clocks: nvidia-smi -i <gpu> -rgc -rmc',
            "a GPU held below its top clocks serves slower",
        )
    return CheckResult(cid, Status.PASS, summarise(seen), want)


def ecc_check(probe: Probe, nvml: Nvml) -> CheckResult:
    """Reported, never changed: the agent has no ECC setting (docs/settings.md says why)."""
    cid, want = "gpu.ecc", "enabled, nothing pending, no uncorrected errors"
    parts: dict[int, str] = {}
    problems: list[str] = []
    for g in probe.topo.gpus:
        mode = _get(nvml, g.pci_bus_id, "nvmlDeviceGetEccMode")
        if not isinstance(mode, (list, tuple)):
            continue
        cur, pending = (int(x) for x in mode)
        vol = _get(nvml, g.pci_bus_id, "nvmlDeviceGetTotalEccErrors", ECC_UNCORRECTED, ECC_VOLATILE)
        agg = _get(nvml, g.pci_bus_id, "nvmlDeviceGetTotalEccErrors", ECC_UNCORRECTED, ECC_AGGREGATE)
        on = "enabled" if cur else "disabled"
        counts = f"uncorrected volatile {vol if vol is not None else '-'}, aggregate {agg if agg is not None else '-'}"
        parts[g.index] = f"{on}, {counts}"
        if pending != cur:
            problems.append(f"GPU{g.index}: ECC {on}, {'enabled' if pending else 'disabled'} pending a GPU reset")
        elif not cur:
            problems.append(f"GPU{g.index}: ECC disabled (memory errors go undetected)")
        if isinstance(vol, int) and vol:
            problems.append(f"GPU{g.index}: {vol} uncorrected since the driver loaded (see gpu.memory_health)")
        elif isinstance(agg, int) and agg:
            problems.append(f"GPU{g.index}: {agg} uncorrected over its lifetime (aggregate)")
    if not parts:
        return CheckResult(cid, Status.SKIP, None, want, "", "no ECC on these GPUs")
    if problems:
        return CheckResult(
            cid,
            Status.WARN,
            "; ".join(problems),
            want,
            "nvidia-smi -i <gpu> -e 1, then reset the GPU (drained); nvidia-smi -q -d ECC,ROW_REMAPPER",
            "ECC costs a little memory bandwidth and catches the errors that corrupt a served model's weights",
        )
    return CheckResult(cid, Status.PASS, summarise(parts), want)


def checks(probe: Probe) -> list[CheckResult]:
    if not probe.topo.gpus:
        return []  # a host without GPUs has no GPU checks (as for the gpu.* settings)
    if probe.nvml is None:
        return [
            CheckResult(cid, Status.SKIP, None, None, "", "NVML unavailable")
            for cid in CHECK_IDS
            if cid != "gpu.compute_mode" or not managed(probe)
        ]
    nvml = probe.nvml
    modes = [r for r in mode_checks(probe, nvml) if r.id != "gpu.compute_mode" or not managed(probe)]
    tuning = [power_check(probe, nvml), clocks_check(probe, nvml), ecc_check(probe, nvml)]
    return [memory_health_check(probe, nvml), foreign_check(probe, nvml), *modes, *tuning]


CHECK_IDS = (
    "gpu.memory_health",
    "gpu.foreign_processes",
    "gpu.compute_mode",
    "gpu.mig",
    "gpu.power_limit",
    "gpu.clocks",
    "gpu.ecc",
)


def managed(probe: Probe) -> bool:
    """[gpu] compute_mode manages the mode: its per-GPU settings (gpu.<i>.compute_mode) replace the check."""
    return probe.config.gpu is not None and probe.config.gpu.compute_mode is not None


CHECKS = Registered(CHECK_IDS, checks)
