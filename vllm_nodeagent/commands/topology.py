"""`vllm-nodeagent topology`: the GPU/NUMA/NIC/disk map as a table or JSON."""

from __future__ import annotations

import argparse

from vllm_nodeagent.context import EXIT_OK, Context, print_json
from vllm_nodeagent.topology import discover_with_nvml, render_table


def cmd_topology(ctx: Context, args: argparse.Namespace) -> int:
    topo = discover_with_nvml(ctx)
    if args.json:
        print_json(topo.to_json())
    else:
        print(render_table(topo))
    return EXIT_OK
