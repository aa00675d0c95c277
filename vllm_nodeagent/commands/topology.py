"""`vllm-nodeagent topology`: the GPU/NUMA/NIC/disk map as a table or JSON (docs/json.md)."""

from __future__ import annotations

import argparse
from typing import Any

from vllm_nodeagent.context import EXIT_OK, Context, print_json
from vllm_nodeagent.cpu_model import VLLM_ISA, read_cpu_model
from vllm_nodeagent.host.parse import format_cpulist
from vllm_nodeagent.topology import Topology, discover_with_nvml, render_table

# CPU sets as the kernel writes them ("0-55,112-167"), each beside its count: a 224-integer list helps no one.
CPU_SETS = ("cpus", "local_cpus")
# -1 means "no such node" in the dataclasses; in JSON every unknown or absent value is null.
NODE_KEYS = ("numa_node", "memory_node")


def topology_json(topo: Topology) -> dict[str, Any]:
    data: dict[str, Any] = _normalize(topo.to_json())
    data["excluded"] = [
        {"what": e.what, "ids": format_cpulist(e.ids), "count": len(e.ids), "reason": e.reason} for e in topo.excluded
    ]
    data["cpus_usable"] = format_cpulist(sorted({c for n in topo.numa_nodes for c in n.cpus}))
    return data


def _normalize(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if k in CPU_SETS and isinstance(v, list):
                out[k] = format_cpulist(v)
                out[f"{k}_count"] = len(v)
            else:
                out[k] = _normalize(v, k)
        return out
    if isinstance(value, list):
        return [_normalize(v) for v in value]
    if key in NODE_KEYS and value == -1:
        return None
    if value == "":
        return None
    return value


def cmd_topology(ctx: Context, args: argparse.Namespace) -> int:
    topo = discover_with_nvml(ctx, log_warnings=False)  # the table and the JSON carry them
    cpu = read_cpu_model(ctx.host)  # here only: no other command pays for it
    if args.json:
        data = topology_json(topo)
        data["cpu"] = _normalize(cpu.to_json()) if cpu is not None else None
        print_json(data, "topology")
    else:
        print(render_table(topo))
        if cpu is not None:
            isa = " ".join(cpu.isa) or "none of " + ", ".join(VLLM_ISA[:3]) + ", ..."
            model = cpu.model or "model not named by the kernel"
            print(f"\nCPU: {model} ({cpu.vendor or '?'}); ISA for vLLM's CPU backend: {isa}")
    return EXIT_OK
