"""The serve keeper's side jobs around the running vLLM: where its pid file goes, its STATUS= part, the binding
check after the gate, and worker pinning (binding "numactl+pin"). Functions over the keeper (serve_keeper.py
stays small)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from vllm_nodeagent.daemon.loop import Status
from vllm_nodeagent.daemon.worker_pins import pin_workers
from vllm_nodeagent.serving.binding import binding_mismatches, live_binding
from vllm_nodeagent.serving.state import PID_FILE, state_dir_problem

if TYPE_CHECKING:
    from vllm_nodeagent.daemon.serve_keeper import ServeKeeper


def pid_file_path(k: ServeKeeper) -> str:
    """vllm.pid in ``pid_dir`` (the serve unit's runtime dir) or the state dir; "" when that is unusable."""
    if k.pid_dir:
        return os.path.join(k.pid_dir, PID_FILE)
    state_dir = k.ctx.config.agent.state_dir
    why = state_dir_problem(k.ctx.host, state_dir)  # checked by fd (host/fsafe), made 0755 when missing
    if why:
        k.log.warning("state_dir_unusable", path=state_dir, error=why)
        return ""
    return str(k.ctx.host.path(state_dir) / PID_FILE)


def verify_binding(k: ServeKeeper) -> None:
    if k.child is None or k.plan is None:
        return
    procs = live_binding(k.child.pid)
    problems = binding_mismatches(k.plan, procs)
    for p in procs:
        k.log.info("vllm_binding", pid=p["pid"], cpus=p["cpus"], mems=p["mems"], mempolicy=p["mempolicy"])
    for problem in problems:
        k.log.warning("vllm_binding_mismatch", pid=k.child.pid, detail=problem)


def pin_pending(k: ServeKeeper) -> None:
    if k.plan is None or k.child is None or k.loop.topo is None or not k._pins_pending():
        return
    k.loop.open_nvml()
    if k.loop.nvml is None:
        k.log.warning("worker_pin_unavailable", pid=k.child.pid, reason=k.loop.nvml_error)
        k.plan.pin = {}
        return
    pin_workers(k.plan, k.child.pid, k.loop.topo, k.loop.nvml, k.pinned, k.log)


def keeper_status(k: ServeKeeper) -> Status:
    """The serve keeper's part of STATUS=."""
    from vllm_nodeagent.daemon.serve_keeper import CRASH_LOOP_AFTER

    what = "vLLM loading" if not k.loop.ready_sent else "vLLM restarting (loading)"
    if k.phase == "loading":
        return Status(f"{what}: waiting for {k.vcfg.health_url}", alone=True)
    if k.phase == "gating":
        return Status(f"{what}: health ok, smoke completion", alone=True)
    if k.phase == "backoff":
        n = k.backoff.failures
        loop = " (crash loop)" if n >= CRASH_LOOP_AFTER else ""
        return Status(f"vLLM exited {n}x in a row{loop}; restarting in {k.restart_at - k.clock():.0f}s", alone=True)
    return Status("watching" if k.phase in ("watching", "init") else "serving")
