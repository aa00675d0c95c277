"""The table of setting families, in apply order: config + topology -> settings; journal entries -> writers.

A new family is one module in this package that exposes ``FAMILY`` (a ``base.Family``: its name, ``build`` from
the config, ``rebuild`` from the journal's params) plus one line in ``FAMILIES`` below. apply, doctor, drift, the
journal and revert need no other edit (tests/test_families.py proves it with a family registered in a test).
"""

from __future__ import annotations

from typing import Optional

from vllm_nodeagent.config import Config
from vllm_nodeagent.host import Host
from vllm_nodeagent.nvml import Nvml
from vllm_nodeagent.settings import (
    block,
    bytecode,
    cpu,
    gpu,
    gpu_clocks,
    gpu_compute,
    gpu_power,
    irq,
    irqbalance,
    sysctl,
    thp,
)
from vllm_nodeagent.settings.base import BuildInputs, Family, Tunable
from vllm_nodeagent.topology import Topology

FAMILIES: tuple[Family, ...] = (
    sysctl.FAMILY,
    thp.FAMILY,
    block.FAMILY,
    cpu.FAMILY,
    gpu.FAMILY,
    gpu_power.FAMILY,
    gpu_clocks.FAMILY,
    gpu_compute.FAMILY,
    irqbalance.FAMILY,  # before irq: affinity pinned while irqbalance runs would be moved again
    irq.FAMILY,
    bytecode.FAMILY,  # vllm.bytecode (issue 23): last, it may take seconds
)


def build_tunables(
    config: Config, topology: Topology, host: Host, nvml: Optional[Nvml] = None, nvml_error: str = ""
) -> list[Tunable]:
    """Every setting the config asks to manage, in apply order."""
    inputs = BuildInputs(config, topology, host, nvml, nvml_error)
    return [t for family in FAMILIES for t in family.build(inputs)]


class UnknownFamily(ValueError):
    """A journal entry of a family this agent does not know (a newer release's, or a damaged name)."""


def rebuild(family: str, id: str, params: dict[str, str], host: Host, nvml: Optional[Nvml]) -> Tunable:
    """A reader/writer for a journaled setting, independent of today's config (it may have changed).

    The journal is input: each family rebuilds only its own kernel paths, and the id must be the one that family
    gives those params. Raises ValueError. No generic "file" family: a journal that could name any path would be
    a root file-write primitive.
    """
    found = next((f for f in FAMILIES if f.name == family), None)
    if found is None:
        raise UnknownFamily(f"unknown family {family[:40]!r}")
    try:
        t = found.rebuild(host, nvml, params)
    except ValueError as exc:
        raise ValueError(f"{family} entry: {exc}") from None
    if t.id != id or t.family != family:
        raise ValueError(f"id {id[:80]!r} does not match its {family} parameters")
    return t
