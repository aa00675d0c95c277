"""What to run and how it is bound: the vLLM command under the NUMA binding of its GPUs (``plan``).

``plan`` is pure apart from looking up the user and the ``numactl`` binary: Config + Topology in, a LaunchPlan
(argv, env, nodes, CPUs, how the binding is done) out. ``build_plan`` adds the one vLLM argument probe (probe.py)
that validates ``[vllm] args`` and says whether vLLM binds workers itself. Binding rules:

* GPUs on one node N (or ``[vllm] nodes`` given): ``numactl --cpunodebind=N --membind=N <vllm ...>``
  (``preferred``/``interleave`` map to numactl's ``--preferred``/``--interleave``; ``none``: no wrapper).
* GPUs spanning nodes: vLLM pins each worker itself when given ``--numa-bind --numa-bind-nodes`` (it skips its
  own binding when an outer numactl already narrowed its affinity), so when the installed vLLM's parser knows
  that flag we pass the per-GPU nodes in ``CUDA_VISIBLE_DEVICES`` order and no outer wrapper; otherwise we
  bind to the union of the nodes and pin each worker to its GPU's CPUs once it shows up (``pin`` in the plan).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional

from vllm_nodeagent import log
from vllm_nodeagent.config import VllmConfig
from vllm_nodeagent.host.parse import format_cpulist
from vllm_nodeagent.serving.args import NUMA_BIND_FLAG, NUMA_BIND_NODES_FLAG, ProbeResult, static_findings
from vllm_nodeagent.serving.env import SAFE_PATH, LaunchError, RunAs, child_env
from vllm_nodeagent.serving.probe import ProbeBeside, probe_as_user, probe_beside
from vllm_nodeagent.slurm_step import StepGpuError, StepGpus, step_gpus
from vllm_nodeagent.topology import Topology

if TYPE_CHECKING:
    from vllm_nodeagent.context import Context


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


def select_gpus(
    cfg: VllmConfig, topo: Topology, override: Optional[list[int]], step: Optional[StepGpus] = None
) -> list[int]:
    """--gpus, else [vllm] gpus, else every GPU; inside a Slurm step only the step's GPUs (slurm_step.py)."""
    wanted = list(override) if override else list(cfg.gpus)
    if step is not None:
        outside = [i for i in wanted if i not in step.indices]
        if outside:
            raise LaunchError(f"GPU {outside[0]} is not one of this Slurm step's GPUs ({step.source})")
        return wanted or list(step.indices)
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
    run_as: RunAs,
    numactl: Optional[str] = None,
    source_env: Optional[dict[str, str]] = None,
    cache_dir: str = "",
) -> LaunchPlan:
    """The launch plan. ``vllm_numa_bind`` answers whether the installed vLLM knows ``--numa-bind-nodes``
    (asked only when the GPUs span nodes, because it costs a vLLM import in a subprocess)."""
    who = run_as
    try:
        step = step_gpus(os.environ if source_env is None else source_env, topo)
    except StepGpuError as exc:
        raise LaunchError(str(exc)) from None
    gpus = select_gpus(cfg, topo, gpus_override, step)
    gpu_objs = [topo.gpu(i) for i in gpus]
    gpu_nodes = [g.numa_node if g is not None else -1 for g in gpu_objs]
    # Only CPU nodes the process may use are binding targets: never a GPU-memory or memory-only node.
    known_nodes = {n.id for n in topo.cpu_nodes()}
    notes: list[str] = []
    if cfg.nodes:
        bad = [n for n in cfg.nodes if n not in known_nodes]
        if bad:
            raise LaunchError(
                f"[vllm] nodes: {_why_not_target(topo, bad[0])} (binding targets here: "
                f"{_nodes_arg(sorted(known_nodes)) or 'none'})"
            )
        nodes = sorted(cfg.nodes)
    else:
        unplaced = [g for g in gpu_objs if g is not None and g.numa_node < 0]
        # One GPU without locality makes any node a guess for it: launch unbound and say why.
        nodes = [] if unplaced else sorted({n for n in gpu_nodes if n >= 0})
        for g in unplaced:
            notes.append(f"GPU{g.index} has no NUMA locality ({g.no_locality or 'unknown'}); not binding")
    env = child_env(cfg, who, gpus, source_env, cache_dir)
    if step is not None:
        by_uuid = step.by_uuid and all(g is not None and g.uuid for g in gpu_objs)
        if by_uuid and "CUDA_VISIBLE_DEVICES" not in cfg.env:
            # Slurm's device cgroup renumbers what CUDA sees from 0: a UUID names the same GPU either way.
            env["CUDA_VISIBLE_DEVICES"] = ",".join(g.uuid for g in gpu_objs if g is not None)
        notes.append(f"Slurm step: GPUs {','.join(map(str, gpus)) or 'none'} from {step.source}")
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
        argv=prefix + command,
        env=env,
        numa_nodes=nodes if binding != "none" else [],
        cpus=cpus,
        gpus=gpus,
        gpu_nodes=gpu_nodes,
        binding=binding,
        policy=policy,
        mempolicy=mempolicy,
        user=who.name,
        uid=who.uid,
        gid=who.gid,
        groups=list(who.groups),
        switch_user=who.switch,
        pin=pin,
        notes=notes,
    )


def accept_args(pr: ProbeResult) -> None:
    """Raise LaunchError when vLLM's parser rejected ``[vllm] args``; log what the probe found otherwise."""
    logger = log.get()
    if pr.available and pr.error:
        raise LaunchError(f"vLLM {pr.version} rejects [vllm] args: {pr.error}")
    if not pr.available:
        logger.info("vllm_args_unchecked", reason=pr.reason)
    else:
        logger.info("vllm_args_ok", version=pr.version, python=pr.python, uid=pr.uid)


def _log_static_findings(cfg: VllmConfig) -> None:
    for f in static_findings(list(cfg.args)):
        log.get().warning("vllm_arg_" + f.kind, flag=f.flag, detail=f.message)


def build_plan(
    ctx: Context,
    topo: Topology,
    gpus_override: Optional[list[int]] = None,
    prepare: bool = True,
) -> tuple[LaunchPlan, ProbeResult]:
    """Plan + the vLLM probe (validating args). Raises LaunchError when vLLM rejects the args."""
    cfg = ctx.config.vllm or VllmConfig()
    _log_static_findings(cfg)
    who, cache, pr = probe_as_user(ctx, cfg, prepare=prepare)
    launch_plan = plan(
        cfg,
        topo,
        gpus_override=gpus_override,
        run_as=who,
        cache_dir=cache,
        vllm_numa_bind=lambda: pr.accepts_flag(NUMA_BIND_NODES_FLAG),
    )
    accept_args(pr)
    return launch_plan, pr


def start_plan(
    ctx: Context,
    topo: Topology,
    gpus_override: Optional[list[int]] = None,
    cancelled: Optional[Callable[[], bool]] = None,
) -> tuple[LaunchPlan, Optional[ProbeBeside]]:
    """The daemon's plan for a start, with the argument probe (a vLLM import: 10-30 s on small hosts) running
    beside vLLM's start instead of before it when the plan does not need its answer (it does only for GPUs
    spanning nodes, to learn whether vLLM knows --numa-bind-nodes; then this waits for it as build_plan does).
    Returns the probe still running — the caller holds READY until it answers and stops vLLM if it rejects the
    args (``accept_args``) — or None when it already answered and accepted. Raises LaunchError as build_plan."""
    cfg = ctx.config.vllm or VllmConfig()
    _log_static_findings(cfg)
    from vllm_nodeagent.serving.compile_keep import keep_or_clear

    who, cache, pending = probe_beside(ctx, cfg, lambda user, cache: keep_or_clear(ctx, cfg, user, cache, topo))
    launch_plan = plan(
        cfg,
        topo,
        gpus_override=gpus_override,
        run_as=who,
        cache_dir=cache,
        vllm_numa_bind=lambda: pending.wait(cancelled).accepts_flag(NUMA_BIND_NODES_FLAG),
    )
    if pending.waited:
        accept_args(pending.wait(cancelled))
        return launch_plan, None
    return launch_plan, pending


def plan_from_json(data: dict[str, Any]) -> LaunchPlan:
    """A LaunchPlan back from the plan file (its environment is not stored)."""
    names = set(LaunchPlan.__dataclass_fields__)
    kw = {k: v for k, v in data.items() if k in names}
    kw["env"] = {}
    kw["pin"] = {int(k): list(v) for k, v in dict(data.get("pin", {})).items()}
    return LaunchPlan(**kw)
