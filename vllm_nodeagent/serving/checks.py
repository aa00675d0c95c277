"""Doctor's serving checks: ``agent.layout`` (which unit runs vLLM) and the ``vllm.*`` launch checks — numactl,
the user, vLLM's args (the shared probe), the live binding, the environment's paths, the driver's libraries.
Read-only; registered in doctor's registry (checks/registry.py) as LAYOUT and VLLM.
"""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING, Optional

from vllm_nodeagent.checks.base import CheckResult, Probe, Registered
from vllm_nodeagent.checks.status import Status
from vllm_nodeagent.config import VllmConfig
from vllm_nodeagent.host import HostError
from vllm_nodeagent.host.parse import format_cpulist
from vllm_nodeagent.serving.args import ProbeResult, static_findings
from vllm_nodeagent.serving.binding import binding_mismatches, live_binding
from vllm_nodeagent.serving.env import SAFE_PATH, LaunchError, RunAs, program_missing, program_path, resolve_user
from vllm_nodeagent.serving.env_paths import env_path_checks
from vllm_nodeagent.serving.plan import plan, plan_from_json, something_to_launch
from vllm_nodeagent.serving.probe import probe_as_user
from vllm_nodeagent.serving.state import find_running

if TYPE_CHECKING:
    from vllm_nodeagent.context import Context
    from vllm_nodeagent.topology import Topology


def _check(cid: str, status: Status, current: str, desired: str, hint: str = "") -> CheckResult:
    return CheckResult(cid, status, current, desired, hint)


def doctor_checks(ctx: Context, topo: Topology) -> list[CheckResult]:
    """vLLM launch checks for doctor: numactl, the user, vLLM's args, the live binding. Read-only."""
    cfg = ctx.config.vllm or VllmConfig()
    checks: list[CheckResult] = []
    launching = something_to_launch(ctx.config.vllm)
    numactl = shutil.which("numactl", path=SAFE_PATH) or shutil.which("numactl")
    needs_numactl = cfg.numa != "none"
    checks.append(
        _check(
            "vllm.numactl",
            Status.PASS if numactl else (Status.FAIL if needs_numactl and launching else Status.WARN),
            numactl or "missing",
            "numactl on PATH",
            "" if numactl else "apt install numactl / dnf install numactl",
        )
    )
    if cfg.user == "root":
        checks.append(
            _check(
                "vllm.user",
                Status.WARN,
                "root",
                "an unprivileged user",
                "vLLM serves a network API; run it as the 'vllm' system user",
            )
        )
    else:
        try:
            who = resolve_user(cfg.user, ctx.host)
            checks.append(_check("vllm.user", Status.PASS, f"{who.name} (uid {who.uid})", cfg.user))
        except LaunchError as exc:
            checks.append(
                _check("vllm.user", Status.FAIL if launching else Status.WARN, "unusable", cfg.user, str(exc))
            )
    if launching and cfg.command:
        checks.append(_program_check(ctx, cfg))
    for f in static_findings(list(cfg.args)):
        checks.append(
            _check(
                f"vllm.args.{f.flag.lstrip('-')}",
                Status.FAIL if f.kind == "removed" else Status.WARN,
                f.flag,
                "not used" if f.kind == "risky" else "a flag current vLLM accepts",
                f.message,
            )
        )
    if not launching:
        checks.append(_check("vllm.args", Status.SKIP, "", "", "nothing to launch ([vllm] model is empty)"))
    else:
        try:
            _, _, pr = probe_as_user(ctx, cfg, prepare=False)  # launch's probe: same user, same environment
        except LaunchError as exc:
            pr = ProbeResult(False, reason=f"not probed: {exc}")
        if not pr.available:
            checks.append(_check("vllm.args", Status.SKIP, "", "accepted by vLLM's parser", pr.reason))
        elif pr.error:
            checks.append(
                _check(
                    "vllm.args", Status.FAIL, pr.error, "accepted by vLLM's parser", f"vLLM {pr.version} ({pr.python})"
                )
            )
        else:
            checks.append(_check("vllm.args", Status.PASS, f"vLLM {pr.version}", "accepted by vLLM's parser"))
    checks.append(_binding_check(ctx, cfg, topo, numactl))
    checks.extend(env_path_checks(ctx.host, cfg, _vllm_uid(ctx, cfg)))
    return checks


def _program_check(ctx: Context, cfg: VllmConfig) -> CheckResult:
    """``[vllm] command``'s program, looked up as the start does (serving/env.program_missing: the PATH the vLLM
    user's child gets). Missing, no start can succeed: FAIL (before, every other vllm.* check only skipped, and a
    node that could not serve passed doctor). The program is the running machine's, under --root too: the start
    execs it there."""
    desired = "[vllm] command's program on the PATH vLLM gets"
    try:
        run_as = resolve_user(cfg.user, ctx.host)
    except LaunchError:
        return _check("vllm.program", Status.SKIP, "", desired, "the vLLM user is unusable: see vllm.user")
    found = program_path(cfg, run_as)
    if found is not None:
        return _check("vllm.program", Status.PASS, found, desired)
    missing = program_missing(cfg, run_as)  # how the exec would say it
    return _check(
        "vllm.program",
        Status.FAIL,
        f"{missing.filename}: {missing.strerror}" if missing else cfg.command[0],
        desired,
        "install vLLM where the vLLM user finds it, or set [vllm] command to the full path of its vllm",
    )


def _vllm_uid(ctx: Context, cfg: VllmConfig) -> Optional[int]:
    """The vLLM user's uid from --root's /etc/passwd (None: no such account, or the file is refused)."""
    from vllm_nodeagent.host.accounts import Accounts

    try:
        entry = Accounts.of(ctx.host).user(cfg.user)
    except HostError:
        return None
    return entry.uid if entry else None


def _binding_check(ctx: Context, cfg: VllmConfig, topo: Topology, numactl: Optional[str]) -> CheckResult:
    """The live binding of every vLLM process against what the daemon chose (its plan file); a re-plan with
    this host's defaults only when the daemon wrote none (an older agent)."""
    from vllm_nodeagent.host.proc import Procfs
    from vllm_nodeagent.serving.layout import SERVE_RUNTIME_DIR

    # single layout: the root agent's state dir; split: the serve unit's runtime dir (pid and plan side by side),
    # the vLLM user's: hostile input (state.find_running refuses what it cannot trust, in one line)
    procfs = Procfs(ctx.host)
    dirs = [str(ctx.host.path(d)) for d in (ctx.config.agent.state_dir, SERVE_RUNTIME_DIR)]
    running = find_running(dirs, _vllm_uid(ctx, cfg), procfs)
    if running.problem:
        return _check("vllm.binding", Status.WARN, "", "", running.problem)
    pid, saved = running.pid, running.plan
    if pid is None:
        return _check("vllm.binding", Status.SKIP, "", "", "vLLM is not running (no live pid file)")
    source = "the daemon's plan"
    if saved is not None:
        expected = plan_from_json(saved)
    else:
        source = "a re-plan (no plan file for this pid)"
        try:
            expected = plan(cfg, topo, numactl=numactl or "numactl", run_as=RunAs(cfg.user, 0, 0, [], "/", False))
        except LaunchError as exc:
            return _check("vllm.binding", Status.WARN, f"pid {pid}", "", f"cannot plan: {exc}")
    procs = live_binding(pid, procfs)
    problems = binding_mismatches(expected, procs)
    current = "; ".join(f"{p['pid']}: cpus {p['cpus']} mems {p['mems']} {p['mempolicy']}" for p in procs)
    desired = f"cpus {format_cpulist(expected.cpus)} {expected.mempolicy}" if expected.cpus else "unbound"
    desired += f" (binding {expected.binding}, from {source})"
    return _check("vllm.binding", Status.FAIL if problems else Status.PASS, current, desired, "; ".join(problems))


def layout_check(probe: Probe) -> list[CheckResult]:
    """Which unit layout is active: whether vLLM runs in its own unit or under the root agent."""
    from vllm_nodeagent.serving.layout import detect

    layout = detect(probe.host)
    where = "vllm-nodeagent-serve.service" if layout.split else "vllm-nodeagent.service (run)"
    return [CheckResult("agent.layout", Status.PASS, layout.name, None, "", f"vLLM runs in {where}: {layout.reason}")]


def vllm_checks(probe: Probe) -> list[CheckResult]:
    ctx = probe.context()
    checks = doctor_checks(ctx, probe.topo)
    if ctx.config.vllm is None:
        # numactl is a host fact worth showing; the rest only means something when vLLM is managed
        checks = [c for c in checks if c.id == "vllm.numactl"]
        checks.append(CheckResult("vllm", Status.SKIP, None, None, "", "[vllm] is not configured: nothing to launch"))
    elif probe.topo.gpus and something_to_launch(ctx.config.vllm):
        checks.append(driver_libs_check(ctx))
    return checks


def driver_libs_check(ctx: Context) -> CheckResult:
    """vLLM gets a clean environment: can its loader find libcuda/libnvidia-ml there (issue 17)?"""
    import os

    from vllm_nodeagent.serving import driver_libs

    vllm_env = dict(ctx.config.vllm.env if ctx.config.vllm else {})
    v = driver_libs.check(ctx.host, vllm_env, os.environ)
    return CheckResult(
        "vllm.driver_libs", v.status, v.current, "libcuda.so.1, libnvidia-ml.so.1 loadable by vLLM", v.hint
    )


LAYOUT = Registered(("agent.layout",), layout_check)
VLLM = Registered(
    (
        "vllm",
        "vllm.numactl",
        "vllm.user",
        "vllm.program",
        "vllm.args",
        "vllm.args.*",
        "vllm.binding",
        "vllm.env.*",
        "vllm.driver_libs",
    ),
    vllm_checks,
)
