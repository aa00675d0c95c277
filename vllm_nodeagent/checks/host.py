"""The host facts every other check stands on: the config was read, NVML answers (or why it is not asked), the
usable NUMA nodes and each GPU's place on them. Read-only; registered in doctor's registry (checks/registry.py)."""

from __future__ import annotations

from vllm_nodeagent.checks.base import CheckResult, Probe, Registered
from vllm_nodeagent.checks.status import Status
from vllm_nodeagent.host.parse import format_cpulist
from vllm_nodeagent.nvml import NvmlCallError
from vllm_nodeagent.topology import Topology


def host_checks(probe: Probe) -> list[CheckResult]:
    """``config``, ``nvml``, ``topology.numa``, ``topology.gpu_numa``: the host facts discovery depends on."""
    ctx, topo, nvml, nvml_error = probe.context(), probe.topo, probe.nvml, probe.nvml_why
    config = probe.config
    checks = [CheckResult("config", Status.PASS, config.path, None, "", "valid")]

    sysfs_gpus = any(g.source == "sysfs" for g in topo.gpus)
    if nvml is not None:
        try:
            driver = nvml.driver_version()
            checks.append(
                CheckResult("nvml", Status.PASS, f"driver {driver}", "usable", "", f"{len(topo.gpus)} GPU(s)")
            )
        except NvmlCallError as exc:
            checks.append(CheckResult("nvml", Status.FAIL, str(exc), "usable", "check the NVIDIA driver (nvidia-smi)"))
    elif ctx.nvml_not_read():
        checks.append(
            CheckResult(
                "nvml",
                Status.SKIP,
                "not read under --root",
                "usable",
                "",
                "NVML is the real host's (this machine's driver), not the --root tree's: it is not read under --root",
            )
        )
    elif topo.gpus and sysfs_gpus:
        checks.append(
            CheckResult(
                "nvml",
                Status.FAIL,
                nvml_error or "unavailable",
                "usable",
                "install the NVIDIA driver (libnvidia-ml.so.1) and nvidia-ml-py",
                "NVIDIA GPUs are on the PCI bus but NVML does not answer",
            )
        )
    else:
        checks.append(
            CheckResult("nvml", Status.SKIP, nvml_error or "unavailable", "usable", "", "no NVIDIA GPU on this host")
        )

    checks.append(numa_check(topo))
    if topo.gpus:
        unplaced = [g for g in topo.gpus if g.numa_node < 0]
        current = ", ".join(f"GPU{g.index}:node{g.numa_node}/{format_cpulist(g.local_cpus) or '-'}" for g in topo.gpus)
        if unplaced:
            # No locality is a fact of the board, not a fault: the launcher runs such GPUs unbound.
            checks.append(
                CheckResult(
                    "topology.gpu_numa",
                    Status.WARN,
                    current,
                    "every GPU on a NUMA node",
                    "check firmware NUMA (SRAT/ACPI proximity) settings",
                    "; ".join(f"GPU{g.index} is launched without a NUMA binding: {g.no_locality}" for g in unplaced),
                )
            )
        elif topo.warnings:
            checks.append(
                CheckResult(
                    "topology.gpu_numa",
                    Status.WARN,
                    current,
                    "NVML and sysfs agree",
                    "compare nvidia-smi topo -m with /sys/bus/pci/devices/*/numa_node",
                    "; ".join(topo.warnings),
                )
            )
        else:
            checks.append(CheckResult("topology.gpu_numa", Status.PASS, current, "NVML and sysfs agree"))
    else:
        checks.append(CheckResult("topology.gpu_numa", Status.SKIP, "no GPU", None, "", "nothing to map"))
    return checks


def numa_check(topo: Topology) -> CheckResult:
    """The usable nodes by kind (GPU-memory and memory-only nodes are shown, never bound to) and what was left out."""
    parts = []
    for n in topo.numa_nodes:
        if n.kind == "gpu-memory":
            parts.append(f"node{n.id}:gpu-memory({n.gpu})")
        else:
            parts.append(f"node{n.id}:{n.kind}" + (f"/{format_cpulist(n.cpus)}" if n.cpus else ""))
    excluded = "; ".join(
        f"excluded {'CPUs' if e.what == 'cpu' else 'nodes'} {format_cpulist(e.ids)}: {e.reason}" for e in topo.excluded
    )
    if topo.problems:
        return CheckResult(
            "topology.numa",
            Status.WARN,
            ", ".join(parts),
            "readable sysfs",
            "the files named were skipped; check the kernel and its sysfs",
            "; ".join(topo.problems + ([excluded] if excluded else [])),
        )
    if not topo.cpu_nodes():
        return CheckResult(
            "topology.numa",
            Status.FAIL,
            ", ".join(parts) or "none",
            "a usable CPU node",
            "check the cgroup cpuset and CPU hotplug (cpu/online)",
            excluded,
        )
    return CheckResult("topology.numa", Status.PASS, ", ".join(parts), "usable CPU nodes", "", excluded)


CHECKS = Registered(("config", "nvml", "topology.numa", "topology.gpu_numa"), host_checks)
