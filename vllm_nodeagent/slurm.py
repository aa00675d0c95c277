"""doctor as a Slurm node health check (``HealthCheckProgram``), GPU job prolog and epilog.

The model is LBNL NHC: read-only checks, one line per failure, drain the node with a reason naming the failing
checks, and resume only a node this program drained (its reason starts with ``vllm-nodeagent:``); a node drained
by anyone else is left alone. Slurm is asked through ``scontrol`` (argv lists, a timeout); nothing else is written.

slurmd runs HealthCheckProgram, Prolog and Epilog as root with ``SLURMD_NODENAME`` set, and kills a health check
that runs past 60 s; Prolog/Epilog get ``SLURM_JOB_ID`` and ``SLURM_JOB_GPUS`` (the job's GPU indices).
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from vllm_nodeagent.checks.base import CheckResult
from vllm_nodeagent.checks.status import Status
from vllm_nodeagent.host.subp import CommandError, run
from vllm_nodeagent.nvml import NvmlCallError

if TYPE_CHECKING:
    from vllm_nodeagent.context import Context
    from vllm_nodeagent.nvml import Nvml

PREFIX = "vllm-nodeagent:"
HEALTH, PROLOG, EPILOG = "health", "prolog", "epilog"
MODES = (HEALTH, PROLOG, EPILOG)
SCONTROL_TIMEOUT_S = 15.0
REASON_MAX = 200  # Slurm keeps longer reasons, but sinfo -R and most dashboards cut them
# The checks a GPU job's prolog runs: the GPUs themselves and what lets CUDA reach them.
GPU_CHECK_PREFIXES = ("nvml", "gpu.", "topology.gpu_numa", "stack.", "fabric", "p2p", "xid")
LEFTOVER_BYTES = 1 << 30  # memory still used on a job's GPU after it ended (an idle GPU shows a few MiB)
_STAMP = re.compile(r"\s*\[[^\]]*@[^\]]*\]\s*$")  # scontrol's " [user@time]" after a reason


class SlurmError(Exception):
    """scontrol could not be run or refused; one line naming the command."""


@dataclass(frozen=True)
class NodeState:
    name: str
    state: str  # e.g. IDLE, IDLE+DRAIN, MIXED+DRAIN, DOWN*
    reason: str  # without scontrol's [user@time] stamp

    @property
    def drained(self) -> bool:
        flags = self.state.replace("*", "").split("+")
        return any(f in ("DRAIN", "DRAINED", "DRAINING") for f in flags)

    @property
    def ours(self) -> bool:
        return self.reason.startswith(PREFIX)


@dataclass
class Outcome:
    node: str
    mode: str
    failing: list[str]  # the check ids that drain (FAIL, and WARN when configured)
    action: str = "none"  # drain | resume | update-reason | left-alone | none
    reason: str = ""
    before: Optional[NodeState] = None
    lines: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "mode": self.mode,
            "failing": self.failing,
            "action": self.action,
            "reason": self.reason,
            "state_before": self.before.state if self.before else None,
            "reason_before": self.before.reason if self.before else None,
        }


def node_name(explicit: Optional[str], environ: Mapping[str, str]) -> str:
    """--node, else slurmd's SLURMD_NODENAME, else the short host name (Slurm's default NodeName)."""
    return explicit or environ.get("SLURMD_NODENAME") or socket.gethostname().split(".", 1)[0]


def scontrol(args: list[str]) -> str:
    try:
        res = run(["scontrol", *args], SCONTROL_TIMEOUT_S)
    except CommandError as exc:
        raise SlurmError(str(exc)) from None
    if res.returncode != 0:
        msg = " ".join((res.stderr or res.stdout).split()) or f"exit {res.returncode}"
        raise SlurmError(f"scontrol {' '.join(args)}: {msg}")
    return res.stdout


def parse_node(text: str, name: str) -> NodeState:
    """``scontrol show node <name>`` (one field set per line; Reason= owns the rest of its line)."""
    state = reason = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("Reason="):
            reason = _STAMP.sub("", stripped[len("Reason=") :])
            continue
        m = re.search(r"(?:^|\s)State=(\S+)", stripped)
        if m and not state:
            state = m.group(1)
    if not state:
        raise SlurmError(f"scontrol show node {name}: no State= in its answer")
    return NodeState(name, state, "" if reason == "(null)" else reason)


def show_node(name: str) -> NodeState:
    return parse_node(scontrol(["show", "node", name]), name)


def make_reason(mode: str, ids: list[str]) -> str:
    head = PREFIX + (f" {mode}:" if mode != HEALTH else "")
    shown: list[str] = []
    for i, cid in enumerate(ids):
        rest = f" +{len(ids) - i} more"
        if len(head) + len(" " + ",".join([*shown, cid])) + len(rest) > REASON_MAX:
            return f"{head} {','.join(shown)}{rest}"
        shown.append(cid)
    return f"{head} {','.join(shown)}"


def failing_ids(checks: list[CheckResult], drain_on_warn: bool) -> list[str]:
    bad = (Status.FAIL, Status.WARN) if drain_on_warn else (Status.FAIL,)
    return [c.id for c in checks if c.status in bad]


def act(node: str, mode: str, failing: list[str]) -> Outcome:
    """Drain on failure, resume what we drained on success, never touch what someone else drained."""
    out = Outcome(node, mode, failing)
    out.before = show_node(node)
    if failing:
        out.reason = make_reason(mode, failing)
        if out.before.drained and not out.before.ours:
            out.action = "left-alone"
            out.lines.append(f"node {node} is already drained by someone else ({out.before.reason!r}): left alone")
        elif out.before.drained and out.before.reason == out.reason:
            out.lines.append(f"node {node} stays drained: {out.reason}")
        else:
            scontrol(["update", f"nodename={node}", "state=drain", f"reason={out.reason}"])
            out.action = "update-reason" if out.before.drained else "drain"
            out.lines.append(f"node {node} drained: {out.reason}")
    elif out.before.drained and out.before.ours and mode == HEALTH:
        # Only the health check resumes: it runs every check a prolog/epilog drain could have named.
        scontrol(["update", f"nodename={node}", "state=resume"])
        out.action = "resume"
        out.lines.append(f"node {node} resumed (it was drained by {PREFIX.rstrip(':')}: {out.before.reason!r})")
    elif out.before.drained and not out.before.ours:
        out.action = "left-alone"
        out.lines.append(f"node {node} passes but was drained by someone else ({out.before.reason!r}): left alone")
    return out


# -- the checks of each mode -------------------------------------------------------------------------------------
def job_gpus(environ: Mapping[str, str]) -> Optional[list[int]]:
    """SLURM_JOB_GPUS (prolog/epilog: "0,2"), else None (every GPU of the node)."""
    raw = environ.get("SLURM_JOB_GPUS", "").strip()
    if not raw:
        return None
    try:
        return sorted({int(x) for x in raw.split(",") if x.strip()})
    except ValueError:
        return None


def leftover_checks(nvml: Optional[Nvml], buses: list[tuple[int, str]]) -> list[CheckResult]:
    """After a job: no compute process and no memory left on its GPUs."""
    want = "no process and no memory left on the job's GPUs"
    if nvml is None:
        return [CheckResult("gpu.leftover", Status.SKIP, None, want, "", "NVML unavailable")]
    procs_left: list[str] = []
    mem_left: list[str] = []
    for index, bus in buses:
        try:
            procs = nvml.device_get(bus, "nvmlDeviceGetComputeRunningProcesses") or []
            mem = nvml.device_get(bus, "nvmlDeviceGetMemoryInfo")
        except NvmlCallError as exc:  # one GPU's NVML fault is that GPU's finding, not a crash
            procs_left.append(f"GPU{index}: NVML: {' '.join(str(exc).split())}")
            continue
        if procs:
            procs_left.append(f"GPU{index}: pid(s) {', '.join(str(int(p.pid)) for p in procs[:5])}")
        used = int(getattr(mem, "used", 0) or 0)
        if used > LEFTOVER_BYTES:
            mem_left.append(f"GPU{index}: {used / (1 << 30):.1f} GiB used")
    hint = "nvidia-smi --query-compute-apps=pid,name,used_memory --format=csv; kill them or reset the GPU"
    return [
        CheckResult(
            "gpu.leftover_processes",
            Status.FAIL if procs_left else Status.PASS,
            "; ".join(procs_left) or f"{len(buses)} GPU(s) free",
            want,
            hint if procs_left else "",
        ),
        CheckResult(
            "gpu.leftover_memory",
            Status.FAIL if mem_left else Status.PASS,
            "; ".join(mem_left) or "none",
            f"at most {LEFTOVER_BYTES >> 20} MiB used",
            hint if mem_left else "",
        ),
    ]


def mode_checks(ctx: Context, mode: str, environ: Mapping[str, str]) -> list[CheckResult]:
    from vllm_nodeagent.doctor import run_checks
    from vllm_nodeagent.topology import discover

    if mode == HEALTH:
        return run_checks(ctx)
    if mode == PROLOG:
        return [c for c in run_checks(ctx) if c.id.startswith(GPU_CHECK_PREFIXES)]
    nvml, why = ctx.open_nvml()
    try:
        topo = discover(ctx.host, nvml, why)
        wanted = job_gpus(environ)
        buses = [(g.index, g.pci_bus_id) for g in topo.gpus if wanted is None or g.index in wanted]
        if not topo.gpus:
            return [CheckResult("gpu.leftover", Status.SKIP, None, None, "", "no GPU on this node")]
        return leftover_checks(nvml, buses)
    finally:
        if nvml is not None:
            nvml.close()


def run_mode(
    ctx: Context, mode: str, node: Optional[str], drain_on_warn: bool, environ: Optional[Mapping[str, str]] = None
) -> tuple[list[CheckResult], Outcome]:
    env = os.environ if environ is None else environ
    checks = mode_checks(ctx, mode, env)
    outcome = act(node_name(node, env), mode, failing_ids(checks, drain_on_warn))
    return checks, outcome
