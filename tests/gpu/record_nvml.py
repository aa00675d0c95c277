#!/usr/bin/env python3
"""Record what real NVML answers, in the shape tests/nvml_double.py replays.

Read-only: only Get calls (tests/test_record_nvml.py fails on any nvmlDeviceSet*/Reset*/Clear* name in this
file). The lent GPU's settings are not ours to change, so the write paths are tested on the double only.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any


def answer(call: Any) -> Any:
    """The call's value, or {"error": text} the way the double replays a refusal (Not Supported, ...)."""
    import pynvml

    try:
        return call()
    except pynvml.NVMLError as exc:
        return {"error": str(exc)}
    except AttributeError as exc:  # an older nvidia-ml-py without that function: the wrapper sees a refusal too
        return {"error": f"not in this nvidia-ml-py: {exc}"}


def record_readiness(pynvml: Any, h: Any, dev: dict[str, Any]) -> None:
    """Every answer doctor's readiness checks (vllm_nodeagent/checks/) ask NVML for. Get calls only."""
    dev["remapped_rows"] = answer(lambda: [int(x) for x in pynvml.nvmlDeviceGetRemappedRows(h)])
    dev["ecc_uncorrected_volatile"] = answer(lambda: int(pynvml.nvmlDeviceGetTotalEccErrors(h, 1, 0)))
    dev["ecc_corrected_volatile"] = answer(lambda: int(pynvml.nvmlDeviceGetTotalEccErrors(h, 0, 0)))
    fields = {}
    # NVML_FI_DEV_GET_GPU_RECOVERY_ACTION; NVML_FI_DEV_POWER_{MIN,MAX,DEFAULT,CURRENT,REQUESTED}_LIMIT
    for fid in (230, 187, 188, 189, 190, 192):

        def field(fid: int = fid) -> Any:
            (v,) = pynvml.nvmlDeviceGetFieldValues(h, [fid])
            member = {1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}.get(
                int(v.valueType), "uiVal"
            )
            return {"error": f"nvmlReturn {v.nvmlReturn}"} if v.nvmlReturn else int(getattr(v.value, member))

        fields[str(fid)] = answer(field)
    dev["field_values"] = fields
    dev["compute_mode"] = answer(lambda: int(pynvml.nvmlDeviceGetComputeMode(h)))
    dev["mig_mode"] = answer(lambda: [int(x) for x in pynvml.nvmlDeviceGetMigMode(h)])
    dev["memory"] = answer(
        lambda: [int(pynvml.nvmlDeviceGetMemoryInfo(h).total), int(pynvml.nvmlDeviceGetMemoryInfo(h).used)]
    )
    dev["compute_processes"] = answer(
        lambda: [[int(p.pid), int(p.usedGpuMemory or 0)] for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h)]
    )
    dev["pcie"] = answer(
        lambda: {
            "curr_width": int(pynvml.nvmlDeviceGetCurrPcieLinkWidth(h)),
            "max_width": int(pynvml.nvmlDeviceGetMaxPcieLinkWidth(h)),
            "curr_gen": int(pynvml.nvmlDeviceGetCurrPcieLinkGeneration(h)),
            "max_gen": int(pynvml.nvmlDeviceGetMaxPcieLinkGeneration(h)),
        }
    )
    dev["utilization_gpu"] = answer(lambda: int(pynvml.nvmlDeviceGetUtilizationRates(h).gpu))
    samples = []
    for _ in range(3):  # the short window the throttle check samples
        reasons = (
            getattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
            or pynvml.nvmlDeviceGetCurrentClocksThrottleReasons
        )
        samples.append(answer(lambda fn=reasons: int(fn(h))))
        time.sleep(0.05)
    dev["clocks_event_reasons"] = samples if all(isinstance(s, int) for s in samples) else samples[0]

    def fabric() -> list[int]:
        info = pynvml.c_nvmlGpuFabricInfo_t()
        pynvml.nvmlDeviceGetGpuFabricInfo(h, pynvml.byref(info))  # pynvml re-exports ctypes.byref
        return [int(info.state), int(info.status)]

    dev["fabric"] = answer(fabric)
    record_tunables(pynvml, h, dev)


CLOCK_GRAPHICS, CLOCK_SM, CLOCK_MEM = 0, 1, 2  # nvmlClockType_t


def record_tunables(pynvml: Any, h: Any, dev: dict[str, Any]) -> None:
    """What the power limit, clocks, compute mode and ECC settings read (issue 27). Get calls only."""
    dev["power_limit_mw"] = answer(lambda: int(pynvml.nvmlDeviceGetPowerManagementLimit(h)))
    dev["power_default_limit_mw"] = answer(lambda: int(pynvml.nvmlDeviceGetPowerManagementDefaultLimit(h)))
    dev["power_limit_constraints_mw"] = answer(
        lambda: [int(x) for x in pynvml.nvmlDeviceGetPowerManagementLimitConstraints(h)]
    )
    dev["power_enforced_limit_mw"] = answer(lambda: int(pynvml.nvmlDeviceGetEnforcedPowerLimit(h)))
    dev["power_usage_mw"] = answer(lambda: int(pynvml.nvmlDeviceGetPowerUsage(h)))
    dev["supported_memory_clocks"] = answer(lambda: [int(x) for x in pynvml.nvmlDeviceGetSupportedMemoryClocks(h)])
    mems = dev["supported_memory_clocks"]
    if isinstance(mems, list):
        dev["supported_graphics_clocks"] = {
            str(m): answer(lambda m=m: [int(x) for x in pynvml.nvmlDeviceGetSupportedGraphicsClocks(h, m)])
            for m in mems
        }
    dev["applications_clocks"] = {
        name: answer(lambda t=t: int(pynvml.nvmlDeviceGetApplicationsClock(h, t)))
        for name, t in (("graphics", CLOCK_GRAPHICS), ("memory", CLOCK_MEM))
    }
    dev["default_applications_clocks"] = {
        name: answer(lambda t=t: int(pynvml.nvmlDeviceGetDefaultApplicationsClock(h, t)))
        for name, t in (("graphics", CLOCK_GRAPHICS), ("memory", CLOCK_MEM))
    }
    dev["max_clocks"] = {
        name: answer(lambda t=t: int(pynvml.nvmlDeviceGetMaxClockInfo(h, t)))
        for name, t in (("graphics", CLOCK_GRAPHICS), ("sm", CLOCK_SM), ("memory", CLOCK_MEM))
    }
    dev["current_clocks"] = {
        name: answer(lambda t=t: int(pynvml.nvmlDeviceGetClockInfo(h, t)))
        for name, t in (("graphics", CLOCK_GRAPHICS), ("sm", CLOCK_SM), ("memory", CLOCK_MEM))
    }
    # nvmlClockId_t 0..3: current, applications target, applications default, customer boost max
    dev["clock_by_id"] = {
        f"{name}/{cid}": answer(lambda t=t, cid=cid: int(pynvml.nvmlDeviceGetClock(h, t, cid)))
        for name, t in (("graphics", CLOCK_GRAPHICS), ("memory", CLOCK_MEM))
        for cid in range(4)
    }
    # NVML has no getter for locked clocks; the P0 range is the nearest readable thing (recorded to compare)
    dev["pstate0_min_max_clocks"] = {
        name: answer(lambda t=t: [int(x) for x in pynvml.nvmlDeviceGetMinMaxClockOfPState(h, t, 0)])
        for name, t in (("graphics", CLOCK_GRAPHICS), ("memory", CLOCK_MEM))
    }
    dev["locked_clocks"] = {"error": "Not Supported (NVML has no getter for locked clocks)"}
    dev["performance_state"] = answer(lambda: int(pynvml.nvmlDeviceGetPerformanceState(h)))
    dev["auto_boosted_clocks"] = answer(lambda: [int(x) for x in pynvml.nvmlDeviceGetAutoBoostedClocksEnabled(h)])
    dev["supported_clocks_event_reasons"] = answer(
        lambda: int(
            (
                getattr(pynvml, "nvmlDeviceGetSupportedClocksEventReasons", None)
                or pynvml.nvmlDeviceGetSupportedClocksThrottleReasons
            )(h)
        )
    )
    dev["ecc_mode"] = answer(lambda: [int(x) for x in pynvml.nvmlDeviceGetEccMode(h)])
    dev["ecc_default_mode"] = answer(lambda: [int(x) for x in pynvml.nvmlDeviceGetDefaultEccMode(h)])
    dev["ecc_uncorrected_aggregate"] = answer(lambda: int(pynvml.nvmlDeviceGetTotalEccErrors(h, 1, 1)))
    dev["ecc_corrected_aggregate"] = answer(lambda: int(pynvml.nvmlDeviceGetTotalEccErrors(h, 0, 1)))


def main() -> int:
    import pynvml

    pynvml.nvmlInit()
    try:
        out: dict[str, Any] = {
            "driver_version": pynvml.nvmlSystemGetDriverVersion(),
            "devices": [],
            "nvml_version": pynvml.nvmlSystemGetNVMLVersion(),
        }
        words = 4  # 256 CPUs / nodes: plenty for the lent machines
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryAffinity(h, words, 0)
            cpu = pynvml.nvmlDeviceGetCpuAffinityWithinScope(h, words, 0)
            dev: dict[str, Any] = {
                "bus_id": pynvml.nvmlDeviceGetPciInfo(h).busId,
                "name": pynvml.nvmlDeviceGetName(h),
                "uuid": pynvml.nvmlDeviceGetUUID(h),
                "memory_affinity_nodes": [w * 64 + b for w, v in enumerate(mem) for b in range(64) if int(v) >> b & 1],
                "cpu_affinity": [w * 64 + b for w, v in enumerate(cpu) for b in range(64) if int(v) >> b & 1],
                "persistence_mode": int(pynvml.nvmlDeviceGetPersistenceMode(h)),
            }
            links = []
            for link in range(18):
                try:
                    entry = {"active": int(pynvml.nvmlDeviceGetNvLinkState(h, link))}
                    if entry["active"]:
                        entry["type"] = int(pynvml.nvmlDeviceGetNvLinkRemoteDeviceType(h, link))
                        entry["remote"] = pynvml.nvmlDeviceGetNvLinkRemotePciInfo_v2(h, link).busId
                    links.append(entry)
                except pynvml.NVMLError:
                    break
            if links:
                dev["nvlinks"] = links
            record_readiness(pynvml, h, dev)
            try:  # recorded for comparison only: the agent does not use it (Grace reports the GPU's own node)
                dev["numa_node_id_raw"] = pynvml.nvmlDeviceGetNumaNodeId(h)
            except pynvml.NVMLError as exc:
                dev["numa_node_id_raw"] = f"error: {exc}"
            out["devices"].append(dev)
        links = {}
        for i in range(len(out["devices"])):
            for j in range(i + 1, len(out["devices"])):
                a, b = pynvml.nvmlDeviceGetHandleByIndex(i), pynvml.nvmlDeviceGetHandleByIndex(j)
                links[f"{i}-{j}"] = int(pynvml.nvmlDeviceGetTopologyCommonAncestor(a, b))
        out["common_ancestor"] = links
        p2p = {}
        for i in range(len(out["devices"])):
            for j in range(i + 1, len(out["devices"])):
                a, b = pynvml.nvmlDeviceGetHandleByIndex(i), pynvml.nvmlDeviceGetHandleByIndex(j)
                p2p[f"{i}-{j}"] = answer(lambda a=a, b=b: int(pynvml.nvmlDeviceGetP2PStatus(a, b, 0)))  # READ caps
        out["p2p_read"] = p2p
        out["cuda_driver_version"] = answer(lambda: int(pynvml.nvmlSystemGetCudaDriverVersion()))
    finally:
        pynvml.nvmlShutdown()
    json.dump(out, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
