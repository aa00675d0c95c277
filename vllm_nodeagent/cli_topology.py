"""`vllm-nodeagent topology`."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from vllm_nodeagent import log
from vllm_nodeagent.topology import Topology, discover, render_table

if TYPE_CHECKING:
    from vllm_nodeagent.context import Context


def discover_with_nvml(ctx: Context) -> Topology:
    """Discover with NVML when it opens; warnings are logged once here."""
    nvml, why = ctx.open_nvml()
    try:
        topo = discover(ctx.host, nvml, why)
    finally:
        if nvml is not None:
            nvml.close()
    logger = log.get()
    if why:
        logger.warning("nvml_unavailable", reason=why)
    for w in topo.warnings:
        logger.warning("topology_mismatch", detail=w)
    for p in topo.problems:
        logger.warning("topology_unreadable", detail=p)  # that item was skipped; discovery went on
    return topo


def cmd_topology(ctx: Context, args: argparse.Namespace) -> int:
    from vllm_nodeagent.context import print_json

    topo = discover_with_nvml(ctx)
    if args.json:
        print_json(topo.to_json())
    else:
        print(render_table(topo))
    return 0
