#!/usr/bin/env python3
"""Record what real NVML answers, in the shape tests/nvml_double.py replays. Read-only: only Get calls."""

from __future__ import annotations

import json
import sys
from typing import Any


def main() -> int:
    import pynvml

    pynvml.nvmlInit()
    try:
        out: dict[str, Any] = {"driver_version": pynvml.nvmlSystemGetDriverVersion(), "devices": [],
                               "nvml_version": pynvml.nvmlSystemGetNVMLVersion()}
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
    finally:
        pynvml.nvmlShutdown()
    json.dump(out, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
