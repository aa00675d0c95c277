"""doctor's report: every configured setting, the host facts vLLM depends on and the readiness checks, as one list
of ``CheckResult`` (printed by commands/doctor.py). Never changes a setting."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from vllm_nodeagent.checks.base import CheckResult, Fix
from vllm_nodeagent.checks.status import Status
from vllm_nodeagent.context import EXIT_FAILED, EXIT_OK
from vllm_nodeagent.host.parse import format_cpulist
from vllm_nodeagent.nvml import Nvml, NvmlCallError
from vllm_nodeagent.settings import engine
from vllm_nodeagent.settings.base import Tunable
from vllm_nodeagent.settings.families import build_tunables
from vllm_nodeagent.topology import Topology, discover

if TYPE_CHECKING:
    from vllm_nodeagent.context import Context


def setting_checks(tunables: list[Tunable]) -> list[CheckResult]:
    """One result per configured setting. A setting that does not hold gets a fix: ``apply --only ID`` (the
    command line prefix comes from the context at presentation), or the owner's command; DESIRED is what apply
    would write from the value read (a floor keeps fields already above it), not the config's text."""
    by_id = {t.id: t for t in tunables}
    checks: list[CheckResult] = []
    for o in engine.verify(tunables):
        t = by_id[o.id]
        fix: Optional[Fix] = None
        desired = o.desired
        if o.status == engine.OK:
            status, hint = Status.PASS, ""
        elif o.status == engine.SKIPPED:
            status, hint = Status.SKIP, ""
        elif o.status == engine.MISSING:
            status, hint = Status.WARN, "check the name in the config (a typo, or a kernel module not loaded)"
        else:
            # someone else owns it: tell, don't fail the host for it
            status = (
                Status.WARN
                if o.status == engine.DRIFTED and (t.owner or getattr(t, "advisory", False))
                else Status.FAIL
            )
            hint = t.hint()
            argv = tuple(getattr(t, "fix_argv", tuple)())
            if o.status == engine.DRIFTED:
                fix = Fix(argv=argv, note=hint) if argv else Fix(args=("apply", "--only", t.id), note=hint)
                if o.current is not None and not argv:
                    desired = t.target(o.current)
        checks.append(CheckResult(o.id, status, o.current, desired, hint, o.message, fix))
    return checks


def host_checks(ctx: Context, topo: Topology, nvml: Optional[Nvml], nvml_error: str) -> list[CheckResult]:
    config = ctx.config
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


def vllm_checks(ctx: Context, topo: Topology) -> list[CheckResult]:
    try:
        from vllm_nodeagent.serving import checks as serving_checks
        from vllm_nodeagent.serving.plan import something_to_launch
    except ImportError as exc:  # the serving package ships with the daemon; keep doctor usable without it
        return [CheckResult("vllm", Status.SKIP, None, None, "", f"serving checks unavailable: {exc}")]
    checks = serving_checks.doctor_checks(ctx, topo)
    if ctx.config.vllm is None:
        # numactl is a host fact worth showing; the rest only means something when vLLM is managed
        checks = [c for c in checks if c.id == "vllm.numactl"]
        checks.append(CheckResult("vllm", Status.SKIP, None, None, "", "[vllm] is not configured: nothing to launch"))
    elif topo.gpus and something_to_launch(ctx.config.vllm):
        checks.append(driver_libs_check(ctx))
    return checks


def layout_check(ctx: Context) -> CheckResult:
    """Which unit layout is active: whether vLLM runs in its own unit or under the root agent."""
    from vllm_nodeagent.serving.layout import detect

    layout = detect(ctx.host)
    where = "vllm-nodeagent-serve.service" if layout.split else "vllm-nodeagent.service (run)"
    return CheckResult("agent.layout", Status.PASS, layout.name, None, "", f"vLLM runs in {where}: {layout.reason}")


def readiness_checks(ctx: Context, topo: Topology, nvml: Optional[Nvml]) -> list[CheckResult]:
    """Is the node ready to serve (issue 16): vllm_nodeagent/checks/, one module per area."""
    from vllm_nodeagent.checks import Probe, run_all

    return run_all(Probe(ctx.host, ctx.config, topo, nvml))


def driver_libs_check(ctx: Context) -> CheckResult:
    """vLLM gets a clean environment: can its loader find libcuda/libnvidia-ml there (issue 17)?"""
    import os

    from vllm_nodeagent.serving import driver_libs

    vllm_env = dict(ctx.config.vllm.env if ctx.config.vllm else {})
    v = driver_libs.check(ctx.host, vllm_env, os.environ)
    return CheckResult(
        "vllm.driver_libs", v.status, v.current, "libcuda.so.1, libnvidia-ml.so.1 loadable by vLLM", v.hint
    )


def run_checks(ctx: Context) -> list[CheckResult]:
    nvml, why = ctx.open_nvml()
    try:
        topo = discover(ctx.host, nvml, why)
        tunables = build_tunables(ctx.config, topo, ctx.host, nvml, why)
        checks = [
            *host_checks(ctx, topo, nvml, why),
            layout_check(ctx),
            *setting_checks(tunables),
            *vllm_checks(ctx, topo),
        ]
        checks += readiness_checks(ctx, topo, nvml)
    finally:
        if nvml is not None:
            nvml.close()
    return checks


def summary(checks: list[CheckResult]) -> dict[str, int]:
    return {s.value: sum(1 for c in checks if c.status == s) for s in Status}


def exit_code(checks: list[CheckResult], strict: bool) -> int:
    counts = summary(checks)
    return EXIT_FAILED if counts[Status.FAIL] or (strict and counts[Status.WARN]) else EXIT_OK
