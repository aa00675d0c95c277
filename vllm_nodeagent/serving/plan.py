"""Build the vLLM command under the NUMA binding of its GPUs (``plan``), and ``vllm-nodeagent launch``.

``plan`` is pure apart from looking up the user and the ``numactl`` binary: Config + Topology in, a LaunchPlan
(argv, env, nodes, CPUs, how the binding is done) out. Binding rules:

* GPUs on one node N (or ``[vllm] nodes`` given): ``numactl --cpunodebind=N --membind=N <vllm ...>``
  (``preferred``/``interleave`` map to numactl's ``--preferred``/``--interleave``; ``none``: no wrapper).
* GPUs spanning nodes: vLLM pins each worker itself when given ``--numa-bind --numa-bind-nodes`` (it skips its
  own binding when an outer numactl already narrowed its affinity), so when the installed vLLM's parser knows
  that flag we pass the per-GPU nodes in ``CUDA_VISIBLE_DEVICES`` order and no outer wrapper; otherwise we
  bind to the union of the nodes and pin each worker to its GPU's CPUs once it shows up (``pin`` in the plan).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional

from vllm_nodeagent import log
from vllm_nodeagent.config import VllmConfig
from vllm_nodeagent.parse import format_cpulist, parse_cpulist
from vllm_nodeagent.probe_cache import cached_probe, probe_inputs
from vllm_nodeagent.topology import Topology
from vllm_nodeagent.vllm_args import (
    NUMA_BIND_FLAG,
    NUMA_BIND_NODES_FLAG,
    PROBE_FLAGS,
    ProbeResult,
    probe,
    resolve_python,
    static_findings,
)
from vllm_nodeagent.vllm_env import (
    SAFE_PATH,
    LaunchError,
    RunAs,
    cache_dir_for,
    child_env,
    prepare_cache_dir,
    resolve_user,
)

if TYPE_CHECKING:
    from vllm_nodeagent.context import Context

PID_FILE = "vllm.pid"
PLAN_FILE = "vllm-plan.json"  # what the daemon chose; doctor reads it instead of re-planning


@dataclass
class LaunchPlan:
    argv: list[str]
    env: dict[str, str]
    numa_nodes: list[int]  # nodes the processes are bound to (union)
    cpus: list[int]  # CPUs the processes may run on (union)
    gpus: list[int]  # topology indices, CUDA_VISIBLE_DEVICES order
    gpu_nodes: list[int]  # node of each GPU, same order
    binding: str  # "numactl" | "vllm" (--numa-bind-nodes) | "numactl+pin" | "none"
    policy: str  # [vllm] numa
    mempolicy: str  # what /proc/<pid>/numa_maps should show: "bind:0", "interleave:0-1", "prefer:0", "default"
    user: str
    uid: int
    gid: int
    groups: list[int]
    switch_user: bool
    pin: dict[int, list[int]] = field(default_factory=dict)  # GPU index -> CPUs, for "numactl+pin"
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["pin"] = {str(k): v for k, v in self.pin.items()}
        return data


def something_to_launch(cfg: Optional[VllmConfig]) -> bool:
    """Empty model with the default command = nothing to launch (settings and drift only)."""
    if cfg is None:
        return False
    return bool(cfg.model) or list(cfg.command) != ["vllm", "serve"]


# -- pieces --------------------------------------------------------------------------------------------------
def find_numactl(path_env: str = SAFE_PATH) -> str:
    found = shutil.which("numactl", path=path_env) or shutil.which("numactl")
    if not found:
        raise LaunchError("numactl not found: install the numactl package (apt install numactl / dnf install numactl)")
    return found


def select_gpus(cfg: VllmConfig, topo: Topology, override: Optional[list[int]]) -> list[int]:
    wanted = list(override) if override else list(cfg.gpus)
    if not wanted:
        return [g.index for g in topo.gpus]
    known = {g.index for g in topo.gpus}
    missing = [i for i in wanted if i not in known]
    if missing:
        have = ",".join(str(i) for i in sorted(known)) or "none"
        raise LaunchError(f"GPU index {missing[0]} not found (this host has GPUs: {have})")
    return wanted


def vllm_command(cfg: VllmConfig) -> list[str]:
    argv = list(cfg.command)
    if cfg.model:
        # `vllm serve MODEL`; module-style commands (python -m ...api_server) take --model.
        argv += [cfg.model] if argv[-1] == "serve" else ["--model", cfg.model]
    return argv + list(cfg.args)


def _nodes_arg(nodes: list[int]) -> str:
    return ",".join(str(n) for n in nodes)


def _why_not_target(topo: Topology, node_id: int) -> str:
    node = topo.node(node_id)
    if node is not None and node.gpu:
        return f"NUMA node {node_id} is the memory of GPU {node.gpu}, not a CPU node"
    if node is not None:
        return f"NUMA node {node_id} is a {node.kind} node without usable CPUs"
    why = next((e.reason for e in topo.excluded if e.what == "node" and node_id in e.ids), None)
    return f"NUMA node {node_id} is not usable: {why}" if why else f"NUMA node {node_id} not found"


# -- the plan ------------------------------------------------------------------------------------------------
def plan(
    cfg: VllmConfig,
    topo: Topology,
    *,
    gpus_override: Optional[list[int]] = None,
    vllm_numa_bind: Callable[[], bool] = lambda: False,
    run_as: Optional[RunAs] = None,
    numactl: Optional[str] = None,
    source_env: Optional[dict[str, str]] = None,
    cache_dir: str = "",
) -> LaunchPlan:
    """The launch plan. ``vllm_numa_bind`` answers whether the installed vLLM knows ``--numa-bind-nodes``
    (asked only when the GPUs span nodes, because it costs a vLLM import in a subprocess)."""
    who = run_as or resolve_user(cfg.user)
    gpus = select_gpus(cfg, topo, gpus_override)
    gpu_objs = [topo.gpu(i) for i in gpus]
    gpu_nodes = [g.numa_node if g is not None else -1 for g in gpu_objs]
    # Only CPU nodes the process may use are binding targets: never a GPU-memory or memory-only node.
    known_nodes = {n.id for n in topo.cpu_nodes()}
    notes: list[str] = []
    if cfg.nodes:
        bad = [n for n in cfg.nodes if n not in known_nodes]
        if bad:
            raise LaunchError(f"[vllm] nodes: {_why_not_target(topo, bad[0])} (binding targets here: "
                              f"{_nodes_arg(sorted(known_nodes)) or 'none'})")
        nodes = sorted(cfg.nodes)
    else:
        unplaced = [g for g in gpu_objs if g is not None and g.numa_node < 0]
        # One GPU without locality makes any node a guess for it: launch unbound and say why.
        nodes = [] if unplaced else sorted({n for n in gpu_nodes if n >= 0})
        for g in unplaced:
            notes.append(f"GPU{g.index} has no NUMA locality ({g.no_locality or 'unknown'}); not binding")
    env = child_env(cfg, who, gpus, source_env, cache_dir)
    command = vllm_command(cfg)
    prefix: list[str] = []
    pin: dict[int, list[int]] = {}
    binding, mempolicy = "none", "default"
    policy = cfg.numa
    span = len(nodes) > 1 and not cfg.nodes
    if policy == "none":
        notes.append("[vllm] numa = none: no binding")
    elif not nodes:
        if not gpus:
            notes.append("no GPUs and no [vllm] nodes: not binding")
    elif policy == "bind" and span and vllm_numa_bind():
        binding = "vllm"
        command += [NUMA_BIND_FLAG, NUMA_BIND_NODES_FLAG, *(str(n) for n in gpu_nodes)]
        # vLLM injects numactl through multiprocessing's executable: spawn only.
        env["VLLM_WORKER_MULTIPROC_METHOD"] = "spawn"
        notes.append(f"GPUs span nodes {_nodes_arg(nodes)}: vLLM binds each worker (--numa-bind-nodes)")
    else:
        tool = numactl or find_numactl()
        node_list = _nodes_arg(nodes)
        if policy == "bind":
            prefix = [tool, f"--cpunodebind={node_list}", f"--membind={node_list}"]
            mempolicy = f"bind:{format_cpulist(nodes)}"
        elif policy == "interleave":
            prefix = [tool, f"--cpunodebind={node_list}", f"--interleave={node_list}"]
            mempolicy = f"interleave:{format_cpulist(nodes)}"
        else:  # preferred
            if len(nodes) > 1:
                raise LaunchError(
                    f"[vllm] numa = preferred takes one node, but the GPUs span nodes {node_list}; "
                    "use bind or interleave, or set [vllm] nodes"
                )
            prefix = [tool, f"--cpunodebind={node_list}", f"--preferred={node_list}"]
            mempolicy = f"prefer:{node_list}"
        binding = "numactl"
        if policy == "bind" and span:
            binding = "numactl+pin"
            pin = {g.index: list(g.local_cpus) for g in gpu_objs if g is not None and g.local_cpus}
            notes.append(
                f"GPUs span nodes {node_list} and vLLM has no {NUMA_BIND_NODES_FLAG}: binding to the union, "
                "pinning each worker to its GPU's CPUs once it appears"
            )
    cpus = sorted({c for n in topo.numa_nodes if n.id in nodes for c in n.cpus}) if nodes and binding != "none" else []
    if binding == "vllm":
        cpus = sorted({c for g in gpu_objs if g is not None for c in g.local_cpus})
    return LaunchPlan(
        argv=prefix + command, env=env, numa_nodes=nodes if binding != "none" else [], cpus=cpus, gpus=gpus,
        gpu_nodes=gpu_nodes, binding=binding, policy=policy, mempolicy=mempolicy, user=who.name, uid=who.uid,
        gid=who.gid, groups=list(who.groups), switch_user=who.switch, pin=pin, notes=notes,
    )


def probe_vllm(cfg: VllmConfig, run_as: RunAs, env: dict[str, str], cache_dir: str = "") -> ProbeResult:
    """Run vLLM's own parser over ``[vllm] args`` in a short-lived subprocess, as ``run_as`` with ``env``
    (the launch environment): never vLLM's code as root unless root is the configured user. With ``cache_dir``
    the answer comes from (and goes to) the probe cache there while the install and the inputs are unchanged."""
    interp, why = resolve_python(list(cfg.command), cfg.python, env.get("PATH", SAFE_PATH))
    if not interp:
        return ProbeResult(False, reason=why)
    uid = run_as.uid if run_as.switch else os.geteuid()
    inputs = probe_inputs(interp, list(cfg.args), PROBE_FLAGS, env, uid)
    return cached_probe(cache_dir, inputs, lambda: probe(interp, list(cfg.args), env=env, run_as=run_as))


def probe_cache_dir(ctx: Context, user_cache: str) -> str:
    """Where this process keeps the probe cache: root's state dir, else (the serve unit, as the vLLM user) its
    own cache dir. probe_cache refuses either when another uid could write it."""
    if os.geteuid() == 0:
        return str(ctx.host.path(ctx.config.agent.state_dir))
    return user_cache


def probe_as_user(ctx: Context, cfg: VllmConfig, prepare: bool) -> tuple[RunAs, str, ProbeResult]:
    """The one probe doctor and launch share: the configured user, the launch environment (cache directories
    included; ``prepare`` creates them, doctor only names them). Raises LaunchError for an unusable user."""
    who = resolve_user(cfg.user)
    base = ctx.config.agent.cache_dir
    cache = prepare_cache_dir(ctx.host, base, who) if prepare else cache_dir_for(ctx.host, base, who)
    if prepare or os.path.isdir(cache):
        return who, cache, probe_vllm(cfg, who, child_env(cfg, who, [], None, cache), probe_cache_dir(ctx, cache))
    # Before the first launch (doctor, a dry run) the cache dir does not exist and creating it is launch's job;
    # vLLM's import would fail creating it (seen on the H100: PermissionError), so the probe gets a scratch one.
    with scratch_cache_dir(who) as scratch:
        return who, cache, probe_vllm(cfg, who, child_env(cfg, who, [], None, scratch))


@contextlib.contextmanager
def scratch_cache_dir(who: RunAs) -> Iterator[str]:
    """A private temporary cache dir for one probe, owned by its user, removed afterwards."""
    scratch = tempfile.mkdtemp(prefix="vllm-nodeagent-probe-")
    try:
        if who.switch:
            os.chown(scratch, who.uid, who.gid)
        yield scratch
    finally:
        try:
            shutil.rmtree(scratch)
        except OSError as exc:
            log.get().warning("vllm_probe_scratch_left", path=scratch, error=exc.strerror or str(exc))


def build_plan(
    ctx: Context, topo: Topology, gpus_override: Optional[list[int]] = None, prepare: bool = True,
) -> tuple[LaunchPlan, ProbeResult]:
    """Plan + the vLLM probe (validating args). Raises LaunchError when vLLM rejects the args."""
    cfg = ctx.config.vllm or VllmConfig()
    logger = log.get()
    for f in static_findings(list(cfg.args)):
        logger.warning("vllm_arg_" + f.kind, flag=f.flag, detail=f.message)
    who, cache, pr = probe_as_user(ctx, cfg, prepare=prepare)
    launch_plan = plan(cfg, topo, gpus_override=gpus_override, run_as=who, cache_dir=cache,
                       vllm_numa_bind=lambda: pr.accepts_flag(NUMA_BIND_NODES_FLAG))
    if pr.available and pr.error:
        raise LaunchError(f"vLLM {pr.version} rejects [vllm] args: {pr.error}")
    if not pr.available:
        logger.info("vllm_args_unchecked", reason=pr.reason)
    else:
        logger.info("vllm_args_ok", version=pr.version, python=pr.python, uid=pr.uid)
    return launch_plan, pr


def write_plan_file(state_dir: str, launch_plan: LaunchPlan, pid: int) -> None:
    """What the daemon chose for the running vLLM (doctor compares the live binding with this, not a re-plan)."""
    path = os.path.join(state_dir, PLAN_FILE)
    data = dict(launch_plan.to_json(), pid=pid)
    data.pop("env", None)  # may carry secrets from [vllm] env
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh)
    os.replace(tmp, path)


def read_plan_file(state_dir: str, pid: int) -> Optional[dict[str, Any]]:
    """The daemon's plan for ``pid`` (None when absent, unreadable or written for another pid)."""
    try:
        with open(os.path.join(state_dir, PLAN_FILE), encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("pid") == pid else None


# -- live binding (for the daemon's check after start, and for doctor) ---------------------------------------
def _status_field(pid: int, key: str) -> str:
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
        for line in fh:
            name, _, value = line.partition(":")
            if name == key:
                return value.strip()
    return ""


def mempolicy_of(pid: int) -> str:
    """The process's dominant memory policy as /proc/<pid>/numa_maps shows it ("bind:0", "default", ...)."""
    counts: dict[str, int] = {}
    with open(f"/proc/{pid}/numa_maps", encoding="ascii", errors="replace") as fh:
        for line in fh:
            parts = line.split(None, 2)
            if len(parts) >= 2:
                counts[parts[1]] = counts.get(parts[1], 0) + 1
    return max(counts, key=lambda k: counts[k]) if counts else ""


def process_binding(pid: int) -> dict[str, Any]:
    return {
        "pid": pid,
        "cpus": _status_field(pid, "Cpus_allowed_list"),
        "mems": _status_field(pid, "Mems_allowed_list"),
        "mempolicy": mempolicy_of(pid),
    }


def live_binding(pid: int) -> list[dict[str, Any]]:
    """Binding of ``pid`` and every descendant (vLLM's API server, engine core, workers)."""
    import psutil

    pids = [pid]
    try:
        pids += [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []
    out: list[dict[str, Any]] = []
    for p in pids:
        try:
            out.append(process_binding(p))
        except OSError:
            continue  # exited meanwhile
    return out


def binding_mismatches(launch_plan: LaunchPlan, procs: list[dict[str, Any]]) -> list[str]:
    """What differs from the plan (empty = every process is bound as planned)."""
    if launch_plan.binding not in ("numactl", "numactl+pin"):
        return []
    want_cpus = set(launch_plan.cpus)
    problems: list[str] = []
    for p in procs:
        cpus = set(parse_cpulist(p["cpus"])) if p["cpus"] else set()
        if cpus and not cpus <= want_cpus:
            problems.append(f"pid {p['pid']}: CPUs {p['cpus']}, planned {format_cpulist(sorted(want_cpus))}")
        if p["mempolicy"] and p["mempolicy"] != launch_plan.mempolicy:
            problems.append(f"pid {p['pid']}: memory policy {p['mempolicy']}, planned {launch_plan.mempolicy}")
    return problems


def read_pid_file(state_dir: str) -> Optional[int]:
    try:
        with open(os.path.join(state_dir, PID_FILE), encoding="ascii") as fh:
            pid = int(fh.read().strip())
    except (OSError, ValueError):
        return None
    return pid if os.path.exists(f"/proc/{pid}") else None


# -- doctor ----------------------------------------------------------------------------------------------------
def _check(cid: str, status: str, current: str, desired: str, hint: str = "") -> dict[str, str]:
    return {"id": cid, "status": status, "current": current, "desired": desired, "hint": hint}


def doctor_checks(ctx: Context, topo: Topology) -> list[dict[str, str]]:
    """vLLM launch checks for doctor: numactl, the user, vLLM's args, the live binding. Read-only."""
    cfg = ctx.config.vllm or VllmConfig()
    checks: list[dict[str, str]] = []
    launching = something_to_launch(ctx.config.vllm)
    numactl = shutil.which("numactl", path=SAFE_PATH) or shutil.which("numactl")
    needs_numactl = cfg.numa != "none"
    checks.append(_check(
        "vllm.numactl", "pass" if numactl else ("fail" if needs_numactl and launching else "warn"),
        numactl or "missing", "numactl on PATH", "" if numactl else "apt install numactl / dnf install numactl",
    ))
    if cfg.user == "root":
        checks.append(_check("vllm.user", "warn", "root", "an unprivileged user",
                             "vLLM serves a network API; run it as the 'vllm' system user"))
    else:
        try:
            who = resolve_user(cfg.user)
            checks.append(_check("vllm.user", "pass", f"{who.name} (uid {who.uid})", cfg.user))
        except LaunchError as exc:
            checks.append(_check("vllm.user", "fail" if launching else "warn", "unusable", cfg.user, str(exc)))
    for f in static_findings(list(cfg.args)):
        checks.append(_check(
            f"vllm.args.{f.flag.lstrip('-')}", "fail" if f.kind == "removed" else "warn", f.flag,
            "not used" if f.kind == "risky" else "a flag current vLLM accepts", f.message,
        ))
    if not launching:
        checks.append(_check("vllm.args", "skip", "", "", "nothing to launch ([vllm] model is empty)"))
    else:
        try:
            _, _, pr = probe_as_user(ctx, cfg, prepare=False)  # launch's probe: same user, same environment
        except LaunchError as exc:
            pr = ProbeResult(False, reason=f"not probed: {exc}")
        if not pr.available:
            checks.append(_check("vllm.args", "skip", "", "accepted by vLLM's parser", pr.reason))
        elif pr.error:
            checks.append(_check("vllm.args", "fail", pr.error, "accepted by vLLM's parser",
                                 f"vLLM {pr.version} ({pr.python})"))
        else:
            checks.append(_check("vllm.args", "pass", f"vLLM {pr.version}", "accepted by vLLM's parser"))
    checks.append(_binding_check(ctx, cfg, topo, numactl))
    return checks


def plan_from_json(data: dict[str, Any]) -> LaunchPlan:
    """A LaunchPlan back from the plan file (its environment is not stored)."""
    names = set(LaunchPlan.__dataclass_fields__)
    kw = {k: v for k, v in data.items() if k in names}
    kw["env"] = {}
    kw["pin"] = {int(k): list(v) for k, v in dict(data.get("pin", {})).items()}
    return LaunchPlan(**kw)


def _binding_check(ctx: Context, cfg: VllmConfig, topo: Topology, numactl: Optional[str]) -> dict[str, str]:
    """The live binding of every vLLM process against what the daemon chose (its plan file); a re-plan with
    this host's defaults only when the daemon wrote none (an older agent)."""
    from vllm_nodeagent.layout import SERVE_RUNTIME_DIR

    # single layout: the root agent's state dir; split: the serve unit's runtime dir (pid and plan side by side)
    state = str(ctx.host.path(ctx.config.agent.state_dir))
    pid = read_pid_file(state)
    if pid is None:
        state = str(ctx.host.path(SERVE_RUNTIME_DIR))
        pid = read_pid_file(state)
    if pid is None:
        return _check("vllm.binding", "skip", "", "", "vLLM is not running (no live pid file)")
    saved = read_plan_file(state, pid)
    source = "the daemon's plan"
    if saved is not None:
        expected = plan_from_json(saved)
    else:
        source = "a re-plan (no plan file for this pid)"
        try:
            expected = plan(cfg, topo, numactl=numactl or "numactl", run_as=RunAs(cfg.user, 0, 0, [], "/", False))
        except LaunchError as exc:
            return _check("vllm.binding", "warn", f"pid {pid}", "", f"cannot plan: {exc}")
    procs = live_binding(pid)
    problems = binding_mismatches(expected, procs)
    current = "; ".join(f"{p['pid']}: cpus {p['cpus']} mems {p['mems']} {p['mempolicy']}" for p in procs)
    desired = f"cpus {format_cpulist(expected.cpus)} {expected.mempolicy}" if expected.cpus else "unbound"
    desired += f" (binding {expected.binding}, from {source})"
    return _check("vllm.binding", "fail" if problems else "pass", current, desired, "; ".join(problems))


__all__ = [
    "LaunchError",
    "LaunchPlan",
    "RunAs",
    "binding_mismatches",
    "build_plan",
    "child_env",
    "doctor_checks",
    "live_binding",
    "plan",
    "plan_from_json",
    "probe_as_user",
    "probe_cache_dir",
    "probe_vllm",
    "read_pid_file",
    "read_plan_file",
    "resolve_user",
    "something_to_launch",
    "write_plan_file",
]
