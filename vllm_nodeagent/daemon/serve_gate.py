"""The serve keeper's readiness gate while vLLM loads: EXTEND_TIMEOUT_USEC, the start timeout, the argument probe
beside the start, /health, then the one-token completion (``[vllm] readiness``). Functions over the keeper, like
serve_child.py (serve_keeper.py stays small); passing the gate calls back ``ServeKeeper._child_healthy``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vllm_nodeagent.serving.child import health_ok
from vllm_nodeagent.serving.env import LaunchError
from vllm_nodeagent.serving.plan import accept_args
from vllm_nodeagent.serving.readiness import SmokeCheck

if TYPE_CHECKING:
    from vllm_nodeagent.daemon.serve_keeper import ServeKeeper
    from vllm_nodeagent.serving.probe import ProbeBeside

HEALTH_POLL_S = 0.5  # while vLLM loads
GATE_POLL_S = 0.2  # while the smoke completion runs (in its thread)
GATE_RETRY_S = 2.0  # after a failed smoke completion, while vLLM still runs
EXTEND_EVERY_S = 10.0  # EXTEND_TIMEOUT_USEC cadence while loading
EXTEND_BY_S = 30.0


def check_loading(k: ServeKeeper, now: float) -> None:
    """While vLLM loads: EXTEND_TIMEOUT_USEC, the start timeout, the argument probe, /health, then the gate."""
    if k.child is None:
        return
    if k._awaiting_ready() and now >= k.next_extend:
        remaining = k.load_deadline - now
        if remaining > 0:
            k.loop.notify.extend_timeout(min(EXTEND_BY_S, remaining + 5.0))
        k.next_extend = now + EXTEND_EVERY_S
    if now >= k.load_deadline:
        k.loop.metrics.add_gate_failure()
        k.log.error("vllm_start_timeout", pid=k.child.pid, start_timeout_s=k.vcfg.start_timeout_s)
        k.child.stop(k.vcfg.stop_timeout_s, k.loop.stop_signalled)
        k.child = None
        k.smoke = None
        if not k.loop.ready_sent:
            k.loop.fail(
                f"vLLM was not ready within [vllm] start_timeout_s = "
                f"{k.vcfg.start_timeout_s:g} s: raise it, or see vLLM's output above"
            )
        else:
            k._schedule_restart(now, "start timeout")
        return
    if k.args_probe is not None and not args_accepted(k, k.args_probe, now):
        return
    if k.phase == "gating":
        check_gate(k, now)
        return
    if now < k.next_health:
        return
    if not health_ok(k.vcfg.health_url):
        k.next_health = k.clock() + HEALTH_POLL_S
        return
    if k.vcfg.readiness == "health":
        k._child_healthy(k.clock(), "health")
        return
    k.log.info("vllm_health_ok", pid=k.child.pid, load_s=round(k.clock() - k.child.started_at, 3))
    start_gate(k, k.clock())


def args_accepted(k: ServeKeeper, args_probe: ProbeBeside, now: float) -> bool:
    """The argument probe beside vLLM's start: False while it runs (no READY before vLLM's parser accepted
    ``[vllm] args``) and when it rejected them; then vLLM is stopped and the start fails as it did when the
    probe ran before it (same error, exit 1 for the first start, a backoff restart after a reload)."""
    pr = args_probe.result()
    if pr is None:
        k.next_health = now + HEALTH_POLL_S
        return False
    k.args_probe = None
    try:
        accept_args(pr)
    except LaunchError as exc:
        if not (k.loop.prints_failure and not k.loop.ready_sent):  # launch: its error line says it
            k.log.error("vllm_start_failed", error=str(exc))
        if k.child is not None:
            k.child.stop(k.vcfg.stop_timeout_s, k.loop.stop_signalled)
            k.child = None
        k.plan = None
        if not k.loop.ready_sent:
            k.loop.fail(f"cannot start vLLM: {exc}")
        else:
            k._schedule_restart(k.clock(), f"start failed: {exc}")
        return False
    return True


def start_gate(k: ServeKeeper, now: float) -> None:
    """Second half of the gate: a one-token completion, in a thread; the loop polls it."""
    k.phase = "gating"
    k.smoke = SmokeCheck(k.vcfg)
    k.next_gate = now + GATE_POLL_S
    k.loop.status_now()


def check_gate(k: ServeKeeper, now: float) -> None:
    if now < k.next_gate or k.child is None:
        return
    if k.smoke is None:
        k.smoke = SmokeCheck(k.vcfg)
    result = k.smoke.result()
    if result is None:
        k.next_gate = now + GATE_POLL_S
        return
    k.smoke = None
    ok, detail = result
    if ok:
        k.log.info("vllm_smoke_ok", pid=k.child.pid, detail=detail)
        k._child_healthy(k.clock(), "health+completion")
        return
    # /health said 200 but no token came: not ready. Retry while it runs (a crash is noticed by its exit).
    k.loop.metrics.add_gate_failure()
    k.log.warning("vllm_smoke_failed", pid=k.child.pid, detail=detail, retry_in_s=GATE_RETRY_S)
    k.next_gate = now + GATE_RETRY_S
