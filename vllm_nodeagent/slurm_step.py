"""vLLM as a Slurm job step (``srun … vllm-nodeagent launch|serve``): the GPUs the step was given.

Slurm names the step's GPUs in ``SLURM_STEP_GPUS`` (``SLURM_JOB_GPUS`` for the batch step and prolog), as indices
in gres.conf order (with ``AutoDetect=nvml``: PCI bus order, the agent's own GPU index). ``CUDA_VISIBLE_DEVICES``
is what CUDA will see: under ``ConstrainDevices=yes`` Slurm renumbers it from 0, so it is used only when it names
GPUs by UUID or when no SLURM_*_GPUS variable is set. The CPUs need nothing here: the step's cpuset and affinity are
what topology already reads (vllm_nodeagent/cpuset.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Optional

from vllm_nodeagent.topology import Topology


@dataclass(frozen=True)
class StepGpus:
    indices: list[int]  # topology GPU indices
    source: str  # e.g. "SLURM_STEP_GPUS=0,2"
    by_uuid: bool  # CUDA_VISIBLE_DEVICES for the child should name UUIDs (device cgroups renumber indices)


class StepGpuError(Exception):
    """A Slurm GPU variable that names no GPU of this node; one line naming the variable."""


def in_step(environ: Mapping[str, str]) -> bool:
    return bool(environ.get("SLURM_JOB_ID"))


def step_gpus(environ: Mapping[str, str], topo: Topology) -> Optional[StepGpus]:
    """The step's GPUs, or None outside a Slurm job (or a job without GPUs named)."""
    if not in_step(environ):
        return None
    uuids = {g.uuid: g.index for g in topo.gpus if g.uuid}
    constrained = False
    for var in ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS"):
        raw = environ.get(var, "").strip()
        if raw:
            constrained = True
            try:
                ids = [int(x) for x in raw.split(",") if x.strip()]
            except ValueError:
                raise StepGpuError(f"{var}={raw}: expected GPU indices like 0,2") from None
            return StepGpus(_known(ids, topo, f"{var}={raw}"), f"{var}={raw}", by_uuid=bool(uuids))
    raw = environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if not raw or constrained:
        return None
    names = [x.strip() for x in raw.split(",") if x.strip()]
    if all(n.startswith(("GPU-", "MIG-")) for n in names):
        missing = [n for n in names if n not in uuids]
        if missing:
            raise StepGpuError(f"CUDA_VISIBLE_DEVICES={raw}: {missing[0]} is not a GPU of this node")
        return StepGpus([uuids[n] for n in names], f"CUDA_VISIBLE_DEVICES={raw}", by_uuid=True)
    try:
        ids = [int(n) for n in names]
    except ValueError:
        raise StepGpuError(f"CUDA_VISIBLE_DEVICES={raw}: expected GPU indices or UUIDs") from None
    return StepGpus(_known(ids, topo, f"CUDA_VISIBLE_DEVICES={raw}"), f"CUDA_VISIBLE_DEVICES={raw}", by_uuid=False)


def _known(ids: list[int], topo: Topology, source: str) -> list[int]:
    have = {g.index for g in topo.gpus}
    missing = [i for i in ids if i not in have]
    if missing:
        shown = ",".join(str(i) for i in sorted(have)) or "none"
        raise StepGpuError(f"{source}: GPU {missing[0]} is not a GPU of this node (GPUs here: {shown})")
    return ids
