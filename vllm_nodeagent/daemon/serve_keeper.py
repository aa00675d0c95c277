"""The serving side of the daemon: prewarm before start, vLLM started under the plan, the readiness gate
(/health 200, then a one-token completion: ``[vllm] readiness``), EXTEND_TIMEOUT_USEC while it loads, liveness
checks, worker pinning (binding "numactl+pin"), and restarts with backoff — or, in the serve unit, an exit for
systemd to restart it. A component of ``loop.Loop``: READY when vLLM serves; its next deadline depends on its phase
(health poll while loading, gate poll, restart time, liveness, pinning).

Phases: init → loading → gating → serving; backoff between a crash and the restart; watching = nothing to launch.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any, Optional

from vllm_nodeagent.config import VllmConfig
from vllm_nodeagent.daemon.loop import Status
from vllm_nodeagent.daemon.prewarm_step import IMPORTS_DONE, learn_after_ready, prewarm_before_start
from vllm_nodeagent.daemon.serve_child import keeper_status, pid_file_path, pin_pending, verify_binding
from vllm_nodeagent.daemon.serve_gate import check_loading
from vllm_nodeagent.serving import compile_keep
from vllm_nodeagent.serving.child import Backoff, Child, Exit, health_ok
from vllm_nodeagent.serving.env import LaunchError, program_missing, resolve_user
from vllm_nodeagent.serving.plan import LaunchPlan, something_to_launch, start_plan
from vllm_nodeagent.serving.probe import ProbeBeside
from vllm_nodeagent.serving.readiness import SmokeCheck
from vllm_nodeagent.serving.reaper import reclaim
from vllm_nodeagent.serving.state import write_plan_file

if TYPE_CHECKING:
    from vllm_nodeagent.config import Config
    from vllm_nodeagent.daemon.loop import Loop

PIN_POLL_S = 2.0  # looking for workers to pin (binding "numactl+pin")
NO_PIDFD_POLL_S = 1.0  # a kernel without pidfd: poll the child
CRASH_LOOP_AFTER = 3
EXIT_VLLM_FAILED = 1  # the serve unit: systemd's Restart=on-failure restarts it


class ServeKeeper:
    name = "vllm"

    def __init__(
        self,
        loop: Loop,
        *,
        prewarm: bool = True,
        gpus: Optional[list[int]] = None,
        exit_on_failure: bool = False,
        pid_dir: str = "",
    ) -> None:
        """``exit_on_failure``: the serve unit — after READY a vLLM that is gone ends the daemon (systemd owns
        restarts and their backoff). ``pid_dir``: where vllm.pid and the plan go (default: the state dir)."""
        self.loop = loop
        self.ctx = loop.ctx
        self.log = loop.log
        self.clock = loop.clock
        self.do_prewarm = prewarm
        self.gpus_override = gpus
        self.exit_on_failure = exit_on_failure
        self.pid_dir = pid_dir
        self.plan: Optional[LaunchPlan] = None
        self.args_probe: Optional[ProbeBeside] = None  # the argument probe still running beside vLLM's start
        self.child: Optional[Child] = None
        self.backoff = self._new_backoff(self.ctx.config.vllm)
        self._phase = ""
        self.phase = "init"
        self.smoke: Optional[SmokeCheck] = None
        self.next_gate = 0.0
        self.restart_at = 0.0
        self.load_deadline = 0.0
        self.next_health = 0.0
        self.next_extend = 0.0
        self.next_pin = 0.0
        self.next_liveness = 0.0
        self.next_poll = 0.0  # without a pidfd the child's exit is polled
        self.health_failures = 0
        self.pinned: set[int] = set()
        self._prewarm_locked: Any = None

    @property
    def phase(self) -> str:
        return self._phase

    @phase.setter
    def phase(self, value: str) -> None:  # exported (vllm_nodeagent_vllm_phase): the gate's progress per node
        self._phase = value
        self.loop.metrics.set_phase(value)

    @staticmethod
    def _new_backoff(cfg: Optional[VllmConfig]) -> Backoff:
        c = cfg or VllmConfig()
        return Backoff(c.restart_backoff_initial_s, c.restart_backoff_max_s, c.healthy_reset_s)

    @property
    def vcfg(self) -> VllmConfig:
        return self.ctx.config.vllm or VllmConfig()

    # -- the component -----------------------------------------------------------------------------------------------
    def start(self) -> None:
        launching = something_to_launch(self.ctx.config.vllm)
        if launching and not self._runnable():
            return
        if self.do_prewarm:
            self.loop.guarded("prewarm", self._prewarm)
        if self.loop.pending_stop():
            return
        if launching:
            self._start_child(initial=True)
        else:
            self.phase = "watching"

    def _runnable(self) -> bool:
        """Who vLLM runs as and the program its start execs, before anything runs beside the start: a user that
        does not exist, or a ``[vllm] command`` whose program is not there (on the PATH vLLM gets), fails the first
        start here, said once. (The warm-up beside the start resolves the user and, from the command, the vLLM
        interpreter too, in its thread; it logged the same fault again as a ``prewarm_error`` whenever it got there
        before the start failed: issue 26.6 for the user, 26 "output once" for the program.)"""
        try:
            missing = program_missing(self.vcfg, resolve_user(self.vcfg.user, self.ctx.host))
        except LaunchError as exc:
            self._start_failed(exc, initial=True, now=self.clock())
            return False
        if missing is not None:
            self._start_failed(missing, initial=True, now=self.clock())
            return False
        return True

    def _prewarm(self) -> None:
        self._prewarm_locked = prewarm_before_start(self.loop, self._may_read_weights)

    def _may_read_weights(self) -> Optional[str]:
        """For the warm-up's thread (prewarm_step.prewarm_before_start): None while the vLLM now starting still
        imports, else why the weights may be read. Not only the sign of the imports: a vLLM that serves already
        (a wrapper or a stand-in never shows the sign) or a start that failed or stops has nothing to wait for;
        the CI's fleet leg waited the two-minute fallback for its stand-in before this."""
        phase = self.phase  # set by the loop's thread; a str swap, read once
        if self.ready():
            return "vLLM serving"
        if phase in ("backoff", "stopping"):
            return f"vLLM {phase}"
        child = self.child
        if child is not None and child.imports_done():
            return IMPORTS_DONE
        return None

    def ready(self) -> bool:
        return self.phase in ("serving", "watching")

    def next_deadline(self, now: float) -> float:
        deadlines = [math.inf]
        if self.phase == "loading":
            deadlines.append(self.next_health)
        if self.phase == "gating":
            deadlines.append(self.next_gate)
        if self.phase in ("loading", "gating"):
            deadlines.append(self.load_deadline)
            if self._awaiting_ready():
                deadlines.append(self.next_extend)
        if self.phase == "backoff":
            deadlines.append(self.restart_at)
        if self.child is not None and self._pins_pending():
            deadlines.append(self.next_pin)
        if self.child is not None and self.child.wait_fd() < 0:
            deadlines.append(self.next_poll)
        if self.phase == "serving" and self.child is not None:
            deadlines.append(self.next_liveness)
            if self.backoff.failures and self.child.healthy_since is not None:
                deadlines.append(self.child.healthy_since + self.backoff.healthy_reset_s)
        return min(deadlines)

    def wait_fds(self) -> list[int]:
        fd = self.child.wait_fd() if self.child is not None else -1
        return [fd] if fd >= 0 else []

    def tick(self, now: float) -> None:
        self.next_poll = now + NO_PIDFD_POLL_S
        if self.child is not None:
            ex = self.child.poll()
            if ex is not None:
                # vLLM's engine and workers outlive its API server: end them before anything restarts
                self.child.finish(self.vcfg.stop_timeout_s, self.loop.stop_signalled)
                self._child_exited(ex, self.clock())
                return
        if self.phase in ("loading", "gating") and self.child is not None:
            check_loading(self, now)
        elif self.phase == "backoff" and now >= self.restart_at:
            self._start_child(initial=False)
        elif self.phase == "serving" and self.child is not None and self.child.healthy_since is not None:
            self.backoff.healthy_for(now - self.child.healthy_since)
            if now >= self.next_liveness:
                self._liveness(now)
        if self.child is not None and self._pins_pending() and now >= self.next_pin:
            pin_pending(self)
            self.next_pin = now + PIN_POLL_S

    def status(self) -> Status:
        return keeper_status(self)

    def reload(self, old: Config, new: Config) -> None:
        """vLLM restarts only when ``[vllm]`` changed; READY=1 then waits for the new one to pass the gate."""
        if new.vllm == old.vllm:
            return
        self.log.info("vllm_config_changed", action="restart")
        if self.child is not None:
            self.child.stop(
                old.vllm.stop_timeout_s if old.vllm else VllmConfig().stop_timeout_s, self.loop.stop_signalled
            )
            self.child = None
        self.smoke = None
        self.plan = None
        self.backoff = self._new_backoff(new.vllm)
        self.loop.metrics.set_up(False)
        if something_to_launch(new.vllm):
            self.loop.reload_pending = True  # READY=1 only once the new vLLM passed the gate
            self._start_child(initial=False)
        else:
            self.phase = "watching"

    def stop(self) -> None:
        self.phase = "stopping"
        if self.child is not None:
            self.child.stop(self.vcfg.stop_timeout_s, self.loop.stop_signalled)
            self.child = None
        self.loop.metrics.set_up(False)

    def close(self) -> None:
        if self.child is not None:  # an unexpected error: never leave vLLM behind
            self.child.stop(self.vcfg.stop_timeout_s, self.loop.stop_signalled)
            self.child = None
        if self._prewarm_locked is not None:
            self._prewarm_locked.release()
            self._prewarm_locked = None

    # -- the child ---------------------------------------------------------------------------------------------------
    def _start_child(self, initial: bool) -> None:
        """Start vLLM and enter "loading". A failed first start ends the loop (already logged)."""
        now = self.clock()
        try:
            if self.plan is None:
                if self.loop.topo is None:
                    raise LaunchError("no topology")
                self.loop.notify.status("checking vLLM arguments")
                self.plan, self.args_probe = start_plan(
                    self.ctx, self.loop.topo, self.gpus_override, self.loop.pending_stop
                )
            elif self.loop.topo is not None:  # a crash restart with the same plan: the compile caches judged again
                compile_keep.at_restart(self.ctx, self.loop.topo)
            pid_file = pid_file_path(self)
            if initial and pid_file:  # a vLLM that a killed agent left holds the port and the GPUs
                reclaim(pid_file, self.vcfg.stop_timeout_s, self.loop.stop_signalled)
            self.child = Child(self.plan, pid_file, self.clock)
            if pid_file:
                write_plan_file(os.path.dirname(pid_file), self.plan, self.child.pid, self.child.start_time)
        except (LaunchError, OSError) as exc:
            self._start_failed(exc, initial, now)
            return
        self.pinned = set()
        self.phase = "loading"
        self.load_deadline = now + self.vcfg.start_timeout_s
        self.next_health = now
        self.next_extend = now
        self.next_pin = now + PIN_POLL_S
        self.log.info(
            "vllm_started",
            pid=self.child.pid,
            argv=self.plan.argv,
            user=self.plan.user,
            binding=self.plan.binding,
            numa_nodes=self.plan.numa_nodes,
            gpus=self.plan.gpus,
        )
        for note in self.plan.notes:
            self.log.info("vllm_binding_note", pid=self.child.pid, detail=note)
        self.loop.status_now()

    def _start_failed(self, exc: LaunchError | OSError, initial: bool, now: float) -> None:
        if self.loop.pending_stop():  # a SIGTERM ended a wait of the start: a stop, not a failure
            return
        if not (initial and self.loop.prints_failure):  # launch says it once, as its error line
            self.log.error("vllm_start_failed", error=str(exc))
        if initial:
            why = f"{exc.filename}: {exc.strerror}" if isinstance(exc, OSError) and exc.strerror else str(exc)
            self.loop.fail(f"cannot start vLLM: {why}", 3 if getattr(exc, "host_fault", False) else 1)
            return
        self._schedule_restart(now, f"start failed: {exc}")

    def _awaiting_ready(self) -> bool:
        """systemd waits for READY=1: the first start, or a reload that restarts vLLM."""
        return not self.loop.ready_sent or self.loop.reload_pending

    def _child_healthy(self, now: float, gate: str) -> None:
        """vLLM passed the readiness gate: serving, and READY=1 once every component is ready."""
        if self.child is None or self.plan is None:
            return
        self.child.healthy_since = now
        self.phase = "serving"
        self.health_failures = 0
        self.next_liveness = now + self.vcfg.health_interval_s
        self.loop.metrics.set_up(True)
        self.loop.metrics.set_ready_seconds(now - self.child.started_at)
        self.log.info(
            "vllm_healthy",
            pid=self.child.pid,
            load_s=round(now - self.child.started_at, 3),
            url=self.vcfg.health_url,
            gate=gate,
        )
        verify_binding(self)
        compile_keep.mark_proven(self.ctx)  # the caches this start wrote served: kept through later crashes
        learn_after_ready(self.loop, self.child.pid)  # the libraries it mapped: what the next warm-up reads
        self.loop.component_ready()

    def _liveness(self, now: float) -> None:
        """A vLLM that is alive but no longer answers (a hung engine) is restarted like one that exited."""
        if self.child is None:
            return
        self.next_liveness = now + self.vcfg.health_interval_s
        if health_ok(self.vcfg.health_url):
            self.health_failures = 0
            return
        self.health_failures += 1
        self.log.warning(
            "vllm_health_failed",
            pid=self.child.pid,
            url=self.vcfg.health_url,
            failures=self.health_failures,
            limit=self.vcfg.unhealthy_after,
        )
        if self.health_failures < self.vcfg.unhealthy_after:
            return
        pid = self.child.pid
        self.log.error("vllm_unhealthy", pid=pid, failures=self.health_failures)
        self.child.stop(self.vcfg.stop_timeout_s, self.loop.stop_signalled)
        self.child = None
        self.health_failures = 0
        self.loop.metrics.set_up(False)
        self._schedule_restart(self.clock(), f"unhealthy: {self.vcfg.unhealthy_after} failed health checks", pid)

    def _child_exited(self, ex: Exit, now: float) -> None:
        self.loop.metrics.set_up(False)
        self.child = None
        self.smoke = None
        if not self.loop.ready_sent:
            if not self.loop.prints_failure:  # launch says it once, as its error line (issue 26.6)
                self.log.error("vllm_failed_start", pid=ex.pid, result=ex.describe())
            self.loop.fail(f"vLLM (pid {ex.pid}) ended before it was ready: {ex.describe()}; see its output above")
            return
        self._schedule_restart(now, ex.describe(), pid=ex.pid)

    def _schedule_restart(self, now: float, why: str, pid: int = 0) -> None:
        if self.exit_on_failure:
            # The serve unit: vLLM is gone (exited, unhealthy, failed to restart); exit for systemd to restart it.
            self.phase = "stopping"
            self.log.error("vllm_exited", pid=pid, result=why, action="exit; systemd restarts the serve unit")
            self.loop.notify.status(f"vLLM failed ({why}); exiting for systemd to restart the unit")
            self.loop.fail("", EXIT_VLLM_FAILED)
            return
        delay = self.backoff.next_delay()
        self.phase = "backoff"
        self.restart_at = now + delay
        self.loop.metrics.add_restart()
        self.log.warning("vllm_exited", pid=pid, result=why, restart_in_s=delay, failures=self.backoff.failures)
        if self.backoff.failures >= CRASH_LOOP_AFTER:
            self.log.error("vllm_crash_loop", pid=pid, failures=self.backoff.failures, restart_in_s=delay)
        self.loop.status_now()

    def _pins_pending(self) -> bool:
        return self.plan is not None and len(self.pinned) < len(self.plan.pin)
