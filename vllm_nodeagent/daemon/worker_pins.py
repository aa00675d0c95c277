"""Binding "numactl+pin" (GPUs spanning nodes, a vLLM without ``--numa-bind-nodes``): once vLLM's workers appear,
pin each one (NVML compute pid → GPU) to its GPU's local CPUs, every thread. The serve keeper calls this every
``PIN_POLL_S`` until every GPU's worker is pinned."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vllm_nodeagent.nvml import Nvml
    from vllm_nodeagent.serving.plan import LaunchPlan
    from vllm_nodeagent.topology import Topology


def pin_workers(plan: LaunchPlan, root_pid: int, topo: Topology, nvml: Nvml, pinned: set[int], log: Any) -> None:
    """Pin the workers of vLLM's process tree under ``root_pid`` not pinned yet; adds each pinned GPU to ``pinned``."""
    from vllm_nodeagent.host.proc import ProcError, Procfs
    from vllm_nodeagent.nvml import NvmlCallError

    procfs = Procfs()  # the daemon's own children: the real /proc
    if not procfs.exists(root_pid):
        return
    tree = {root_pid, *procfs.descendants(root_pid)}
    for gpu_index, cpus in plan.pin.items():
        if gpu_index in pinned:
            continue
        gpu = topo.gpu(gpu_index)
        if gpu is None:
            continue
        try:
            pids = [p for p in nvml.compute_pids(gpu.pci_bus_id) if p in tree]
        except NvmlCallError as exc:
            log.warning("worker_pin_failed", gpu=gpu_index, error=str(exc))
            continue
        for pid in pids:
            try:
                tids = procfs.threads(pid)
                for tid in tids:
                    os.sched_setaffinity(tid, cpus)
            except (ProcError, OSError) as exc:
                log.warning("worker_pin_failed", pid=pid, gpu=gpu_index, error=str(exc))
                continue
            log.info("worker_pinned", pid=pid, gpu=gpu_index, cpus=cpus, threads=len(tids))
            pinned.add(gpu_index)
