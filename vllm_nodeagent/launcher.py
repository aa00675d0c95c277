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

import os
import pwd
import shutil
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional

from vllm_nodeagent import log
from vllm_nodeagent.config import VllmConfig
from vllm_nodeagent.parse import format_cpulist, parse_cpulist
from vllm_nodeagent.topology import Topology
from vllm_nodeagent.vllm_args import (
    NUMA_BIND_FLAG,
    NUMA_BIND_NODES_FLAG,
    ProbeResult,
    probe_for,
    static_findings,
)

if TYPE_CHECKING:
    from vllm_nodeagent.cli import Context

SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PID_FILE = "vllm.pid"
_PASS_ENV_PREFIXES = ("CUDA_", "NCCL_")
_PASS_ENV = ("HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "LANG", "LC_ALL", "TZ")


class LaunchError(Exception):
    """The vLLM command cannot be built or started; the message says what to fix."""


@dataclass(frozen=True)
class RunAs:
    name: str
    uid: int
    gid: int
    groups: list[int]
    home: str
    switch: bool  # False when the agent already runs as this user


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
def resolve_user(name: str) -> RunAs:
    """The account vLLM runs as. Root only when written explicitly; switching needs the agent to be root."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise LaunchError(
            f"[vllm] user {name!r} does not exist (the package creates 'vllm'; or: useradd --system {name})"
        ) from None
    euid = os.geteuid()
    if pw.pw_uid == 0 and name != "root":
        raise LaunchError(f"[vllm] user {name!r} has uid 0; write user = \"root\" if you really mean root")
    if euid == pw.pw_uid:
        return RunAs(name, pw.pw_uid, pw.pw_gid, os.getgroups(), pw.pw_dir, switch=False)
    if euid != 0:
        raise LaunchError(f"cannot run vLLM as {name!r}: the agent runs as uid {euid}, not root")
    groups = sorted(set(os.getgrouplist(name, pw.pw_gid)))
    return RunAs(name, pw.pw_uid, pw.pw_gid, groups, pw.pw_dir, switch=True)


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


def child_env(
    cfg: VllmConfig, run_as: RunAs, gpus: list[int], source: Optional[dict[str, str]] = None
) -> dict[str, str]:
    """A clean environment: what vLLM needs, nothing of the agent's (no NOTIFY_SOCKET, no root's HOME)."""
    src = os.environ if source is None else source
    env: dict[str, str] = {"PATH": SAFE_PATH, "HOME": run_as.home, "USER": run_as.name, "LOGNAME": run_as.name}
    for key, value in src.items():
        if key.startswith(_PASS_ENV_PREFIXES) or key in _PASS_ENV:
            env[key] = value
    env.setdefault("LANG", "C.UTF-8")
    command0 = cfg.command[0] if cfg.command else ""
    if command0.startswith("/"):
        # A venv's bin directory first, so `vllm` finds its own helpers (e.g. ninja, triton's compilers).
        env["PATH"] = f"{os.path.dirname(command0)}:{SAFE_PATH}"
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in gpus)
    # Without it CUDA numbers GPUs fastest-first and the indices (PCI bus order) would name other GPUs.
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    env.update(cfg.env)
    return env


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
    env = child_env(cfg, who, gpus, source_env)
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


def probe_vllm(cfg: VllmConfig, env: Optional[dict[str, str]] = None) -> ProbeResult:
    """Run vLLM's own parser over ``[vllm] args`` in a short-lived subprocess (skips when vLLM is absent)."""
    path_env = (env or {}).get("PATH", SAFE_PATH)
    probe_env = dict(env) if env is not None else None
    return probe_for(list(cfg.command), list(cfg.args), cfg.python, path_env=path_env, env=probe_env)


def build_plan(
    ctx: Context, topo: Topology, gpus_override: Optional[list[int]] = None
) -> tuple[LaunchPlan, ProbeResult]:
    """Plan + the vLLM probe (validating args). Raises LaunchError when vLLM rejects the args."""
    cfg = ctx.config.vllm or VllmConfig()
    logger = log.get()
    for f in static_findings(list(cfg.args)):
        logger.warning("vllm_arg_" + f.kind, flag=f.flag, detail=f.message)
    who = resolve_user(cfg.user)
    env = child_env(cfg, who, [], None)
    result: list[ProbeResult] = []

    def vllm_accepts() -> bool:
        if not result:
            result.append(probe_vllm(cfg, env))
        return result[0].accepts_flag(NUMA_BIND_NODES_FLAG)

    launch_plan = plan(cfg, topo, gpus_override=gpus_override, vllm_numa_bind=vllm_accepts, run_as=who)
    if not result:
        result.append(probe_vllm(cfg, env))
    pr = result[0]
    if pr.available and pr.error:
        raise LaunchError(f"vLLM {pr.version} rejects [vllm] args: {pr.error}")
    if not pr.available:
        logger.info("vllm_args_unchecked", reason=pr.reason)
    else:
        logger.info("vllm_args_ok", version=pr.version, python=pr.python)
    return launch_plan, pr


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
        pr = probe_vllm(cfg)
        if not pr.available:
            checks.append(_check("vllm.args", "skip", "", "accepted by vLLM's parser", pr.reason))
        elif pr.error:
            checks.append(_check("vllm.args", "fail", pr.error, "accepted by vLLM's parser",
                                 f"vLLM {pr.version} ({pr.python})"))
        else:
            checks.append(_check("vllm.args", "pass", f"vLLM {pr.version}", "accepted by vLLM's parser"))
    from vllm_nodeagent.layout import SERVE_RUNTIME_DIR

    # single layout: the root agent's state dir; split: the serve unit's runtime dir
    pid = read_pid_file(str(ctx.host.path(ctx.config.agent.state_dir))) or read_pid_file(
        str(ctx.host.path(SERVE_RUNTIME_DIR)))
    if pid is None:
        checks.append(_check("vllm.binding", "skip", "", "", "vLLM is not running (no live pid file)"))
    else:
        try:
            expected = plan(cfg, topo, numactl=numactl or "numactl",
                            run_as=RunAs(cfg.user, 0, 0, [], "/", switch=False))
        except LaunchError as exc:
            checks.append(_check("vllm.binding", "warn", f"pid {pid}", "", f"cannot plan: {exc}"))
        else:
            procs = live_binding(pid)
            problems = binding_mismatches(expected, procs)
            current = "; ".join(f"{p['pid']}: cpus {p['cpus']} {p['mempolicy']}" for p in procs[:4])
            desired = f"cpus {format_cpulist(expected.cpus)} {expected.mempolicy}" if expected.cpus else "unbound"
            checks.append(_check("vllm.binding", "fail" if problems else "pass", current, desired,
                                 "; ".join(problems)))
    return checks


__all__ = [
    "LaunchError", "LaunchPlan", "RunAs", "binding_mismatches", "build_plan", "child_env",
    "doctor_checks", "live_binding", "plan", "probe_vllm", "read_pid_file", "resolve_user",
    "something_to_launch",
]
