"""`vllm-nodeagent run`: the daemon systemd starts (Type=notify).

Order: config (already loaded by the CLI) → topology → apply + verify settings → prewarm → launch vLLM →
READY=1 once vLLM passed the readiness gate (/health 200, then a one-token completion through its OpenAI API,
``[vllm] readiness``) → loop (watchdog pings, drift checks, child supervision) until SIGTERM.

One thread, one loop. Signals only write their number into a self-pipe (``signal.set_wakeup_fd``; the Python
handlers do nothing); the loop sleeps in ``select`` on that pipe and on the child's pidfd, with a timeout set by
the next deadline (watchdog, drift, health poll, restart). An idle daemon wakes only for those deadlines.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import time
from typing import TYPE_CHECKING, Any, Callable, Optional

from vllm_nodeagent import log
from vllm_nodeagent.config import Config, ConfigError, VllmConfig
from vllm_nodeagent.daemon.metrics import Metrics
from vllm_nodeagent.daemon.notify import Notifier
from vllm_nodeagent.launcher import (
    PID_FILE,
    LaunchError,
    LaunchPlan,
    binding_mismatches,
    build_plan,
    live_binding,
    something_to_launch,
    write_plan_file,
)
from vllm_nodeagent.readiness import SmokeCheck
from vllm_nodeagent.supervisor import Backoff, Child, Exit, health_ok

if TYPE_CHECKING:
    from vllm_nodeagent.context import Context
    from vllm_nodeagent.nvml import Nvml
    from vllm_nodeagent.topology import Topology

HEALTH_POLL_S = 0.5  # while vLLM loads
GATE_POLL_S = 0.2  # while the smoke completion runs (in its thread)
GATE_RETRY_S = 2.0  # after a failed smoke completion, while vLLM still runs
EXTEND_EVERY_S = 10.0  # EXTEND_TIMEOUT_USEC cadence while loading
EXTEND_BY_S = 30.0
PIN_POLL_S = 2.0  # looking for workers to pin (binding "numactl+pin")
CRASH_LOOP_AFTER = 3
_HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)


class Daemon:
    def __init__(
        self,
        ctx: Context,
        *,
        manage_settings: bool = True,
        prewarm: bool = True,
        launch_vllm: bool = True,
        gpus_override: Optional[list[int]] = None,
        topology: Optional[Topology] = None,
        notifier: Optional[Notifier] = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ctx = ctx
        self.manage_settings = manage_settings
        self.do_prewarm = prewarm
        self.launch_vllm = launch_vllm  # False: host work only (the "split" layout's root unit)
        self.gpus_override = gpus_override
        self.topo = topology
        self.notify = notifier or Notifier()
        self.clock = clock
        self.log = log.get()
        self.metrics = Metrics(self._textfile(ctx.config.agent.metrics_textfile))
        self.nvml: Optional[Nvml] = None
        self.nvml_error = ""
        self.tunables: list[Any] = []
        self.journal: Any = None
        self.plan: Optional[LaunchPlan] = None
        self.child: Optional[Child] = None
        self.backoff = self._new_backoff(ctx.config.vllm)
        self.ready_sent = False
        self.phase = "init"  # init | loading | gating | serving | backoff | watching | stopping
        self.reload_pending = False  # RELOADING=1 sent; READY=1 once the new vLLM passed the gate
        self.smoke: Optional[SmokeCheck] = None
        self.next_gate = 0.0
        self.restart_at = 0.0
        self.load_deadline = 0.0
        self.next_health = 0.0
        self.next_extend = 0.0
        self.next_drift = 0.0
        self.next_watchdog = 0.0
        self.next_pin = 0.0
        self.next_liveness = 0.0
        self.health_failures = 0
        self.pinned: set[int] = set()
        self.drift_count = 0
        self.exit_code: Optional[int] = None
        self.failure = ""  # why the daemon gave up, in one sentence (launch prints it as its one error line)
        self._prewarm_locked: Any = None
        self._rfd, self._wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._old_handlers: dict[int, Any] = {}
        self._old_wakeup = -1

    def _textfile(self, path: str) -> str:
        """The metrics file is a /var path like any other: it goes through the host seam (--root)."""
        return str(self.ctx.host.path(path)) if path else ""

    # -- requests from outside the loop (tests, or another thread) ---------------------------------------------
    def request(self, sig: int) -> None:
        """Deliver ``sig`` to the loop as if it had been received (SIGTERM, SIGHUP)."""
        os.write(self._wfd, bytes([sig]))

    @staticmethod
    def _new_backoff(cfg: Optional[VllmConfig]) -> Backoff:
        c = cfg or VllmConfig()
        return Backoff(c.restart_backoff_initial_s, c.restart_backoff_max_s, c.healthy_reset_s)

    @property
    def vcfg(self) -> VllmConfig:
        return self.ctx.config.vllm or VllmConfig()

    # -- signals --------------------------------------------------------------------------------------------------
    def _install_signals(self) -> None:
        try:
            self._old_wakeup = signal.set_wakeup_fd(self._wfd, warn_on_full_buffer=False)
        except ValueError:
            return  # not the main thread: requests come through request()
        for sig in _HANDLED:
            self._old_handlers[sig] = signal.signal(sig, _noop_handler)

    def _restore_signals(self) -> None:
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        if self._old_handlers:
            signal.set_wakeup_fd(self._old_wakeup)

    def _drain(self) -> list[int]:
        got: list[int] = []
        while True:
            try:
                data = os.read(self._rfd, 512)
            except BlockingIOError:
                return got
            if not data:
                return got
            got.extend(data)

    # -- the run --------------------------------------------------------------------------------------------------
    def run(self) -> int:
        self._install_signals()
        try:
            return self._run()
        finally:
            self._shutdown_resources()
            self._restore_signals()
            os.close(self._rfd)
            os.close(self._wfd)

    def _run(self) -> int:
        t0 = self.clock()
        self.next_watchdog = t0
        self._watchdog(t0)
        if self.topo is None:
            self.notify.status("discovering topology")
            from vllm_nodeagent.topology import discover_with_nvml

            self.topo = discover_with_nvml(self.ctx)
        if self.manage_settings:
            self.notify.status("applying settings")
            self._open_nvml()
            self._guarded("settings", self._apply_settings)
        if self._pending_stop():
            return self._stop()
        if self.do_prewarm:
            self._guarded("prewarm", self._prewarm)
        if self._pending_stop():
            return self._stop()
        if self.launch_vllm and something_to_launch(self.ctx.config.vllm):
            if not self._start_child(initial=True):
                return 1
        else:
            self.phase = "watching"
            self._send_ready()
        self.next_drift = self.clock() + self.ctx.config.agent.drift_interval_s
        self.log.info("daemon_started", phase=self.phase, startup_s=round(self.clock() - t0, 3))
        return self._loop()

    def _pending_stop(self) -> bool:
        """A SIGTERM that arrived during a blocking phase (settings, prewarm) is honoured before the next one."""
        sigs = self._drain()
        if signal.SIGTERM in sigs or signal.SIGINT in sigs:
            return True
        if signal.SIGHUP in sigs:
            os.write(self._wfd, bytes([signal.SIGHUP]))  # handle once the loop runs
        return False

    def _loop(self) -> int:
        while self.exit_code is None:
            now = self.clock()
            timeout = max(0.0, self._next_deadline() - now)
            fds = [self._rfd]
            if self.child is not None and self.child.wait_fd() >= 0:
                fds.append(self.child.wait_fd())
            with contextlib.suppress(InterruptedError):
                select.select(fds, [], [], timeout)
            for sig in self._drain():
                if sig in (signal.SIGTERM, signal.SIGINT):
                    return self._stop()
                if sig == signal.SIGHUP:
                    self._reload()
            self._tick(self.clock())
        return self.exit_code

    def _next_deadline(self) -> float:
        now = self.clock()
        deadlines = [self.next_drift]
        if self.notify.watchdog_interval_s:
            deadlines.append(self.next_watchdog)
        if self.phase == "loading":
            deadlines.append(self.next_health)
        if self.phase == "gating":
            deadlines.append(self.next_gate)
        if self.phase in ("loading", "gating") and self._awaiting_ready():
            deadlines.append(self.next_extend)
        if self.phase == "backoff":
            deadlines.append(self.restart_at)
        if self.plan is not None and self.plan.pin and self.child is not None and self._pins_pending():
            deadlines.append(self.next_pin)
        if self.child is not None and self.child.wait_fd() < 0:
            deadlines.append(now + 1.0)  # no pidfd: poll the child
        if self.phase == "serving" and self.child is not None:
            deadlines.append(self.next_liveness)
        if self.phase == "serving" and self.backoff.failures and self.child and self.child.healthy_since:
            deadlines.append(self.child.healthy_since + self.backoff.healthy_reset_s)
        return min(deadlines)

    def _tick(self, now: float) -> None:
        self._watchdog(now)
        if self.child is not None:
            ex = self.child.poll()
            if ex is not None:
                self._child_exited(ex, now)
                if self.exit_code is not None:
                    return
        self._guarded("vllm", lambda: self._tick_child(now))
        if now >= self.next_drift:
            self._guarded("settings", self._drift)
            self._guarded("readiness", self._readiness)
            self.next_drift = self.clock() + self.ctx.config.agent.drift_interval_s
        self._guarded("metrics", self.metrics.write)

    def _tick_child(self, now: float) -> None:
        if self.phase in ("loading", "gating") and self.child is not None:
            self._check_loading(now)
        elif self.phase == "backoff" and now >= self.restart_at:
            self._start_child(initial=False)
        elif self.phase == "serving" and self.child is not None and self.child.healthy_since is not None:
            self.backoff.healthy_for(now - self.child.healthy_since)
            if now >= self.next_liveness:
                self._liveness(now)
        if self.plan is not None and self.plan.pin and self.child is not None and now >= self.next_pin:
            self._pin_workers()
            self.next_pin = now + PIN_POLL_S

    def _lock_wait(self, message: str) -> None:
        self.log.warning("journal_lock_wait", detail=message)

    def _guarded(self, component: str, step: Callable[[], object]) -> None:
        """One failure boundary per component (settings/drift, prewarm, vLLM child, readiness, metrics): a bug or
        an OS error in one is logged with its traceback and the others go on; only a stop request ends serving."""
        try:
            step()
        except Exception as exc:
            import traceback

            self.log.error("component_failed", component=component, error=f"{type(exc).__name__}: {exc}",
                           traceback=traceback.format_exc())

    def _watchdog(self, now: float) -> None:
        if self.notify.watchdog_interval_s and now >= self.next_watchdog:
            self.notify.watchdog()
            self.next_watchdog = now + self.notify.watchdog_interval_s

    # -- settings ---------------------------------------------------------------------------------------------------
    def _open_nvml(self) -> None:
        if self.nvml is None:
            self.nvml, self.nvml_error = self.ctx.open_nvml()

    def _apply_settings(self) -> bool:
        """Build the tunables from the current config and apply them. False when any failed (logged)."""
        from vllm_nodeagent.settings.engine import CHANGED, FAILED, FAILURES, OK, apply
        from vllm_nodeagent.settings.families import build_tunables
        from vllm_nodeagent.settings.journal import Journal, JournalError

        if self.topo is None:
            return False
        self.tunables = build_tunables(self.ctx.config, self.topo, self.ctx.host, self.nvml, self.nvml_error)
        self.journal = Journal(self.ctx.host, self.ctx.config.agent.state_dir)
        try:
            with self.journal.locked(on_wait=self._lock_wait):
                outcomes = apply(self.tunables, self.journal)
        except (JournalError, OSError) as exc:
            self.log.error("settings_failed", error=str(exc))
            return False
        for o in outcomes:
            if o.status in (OK, CHANGED, FAILED):
                self.metrics.set_compliance(o.id, o.status != FAILED)
        failed = [o.id for o in outcomes if o.status in FAILURES]
        self.log.info("settings_applied", total=len(outcomes), failed=len(failed),
                      changed=sum(1 for o in outcomes if o.status == CHANGED))
        return not failed

    def _drift(self) -> None:
        if not self.tunables or self.journal is None:
            return
        from vllm_nodeagent.settings.engine import DRIFTED, FAILED, OK, apply, verify
        from vllm_nodeagent.settings.journal import JournalError

        outcomes = verify(self.tunables)
        drifted = [o for o in outcomes if o.status == DRIFTED]
        for o in outcomes:
            if o.status == OK:
                self.metrics.set_compliance(o.id, True)
        mode = self.ctx.config.agent.mode
        for o in drifted:
            self.drift_count += 1
            self.metrics.add_drift(o.id)
            self.metrics.set_compliance(o.id, False)
            self.log.warning("drift", id=o.id, current=o.current, desired=o.desired, mode=mode)
        if drifted and mode == "enforce":
            ids = {o.id for o in drifted}
            try:
                with self.journal.locked(on_wait=self._lock_wait):
                    fixed = apply([t for t in self.tunables if t.id in ids], self.journal)
            except (JournalError, OSError) as exc:
                self.log.error("drift_reapply_failed", error=str(exc))
                return
            for o in fixed:
                self.metrics.set_compliance(o.id, o.status != FAILED)
        if drifted:
            self._status_now()

    def _readiness(self) -> None:
        """Doctor's readiness checks as textfile metrics, and the heartbeat (issue 16)."""
        if not self.metrics.enabled:
            return
        if self.topo is not None:
            from vllm_nodeagent.checks import STATUS_VALUE, Probe, run_all

            results = run_all(Probe(self.ctx.host, self.ctx.config, self.topo, self.nvml))
            self.metrics.set_checks({r.id: STATUS_VALUE[r.status] for r in results})
        self.metrics.heartbeat(time.time())

    def _revert(self) -> None:
        from vllm_nodeagent.settings.engine import revert
        from vllm_nodeagent.settings.journal import Journal, JournalError

        journal = self.journal or Journal(self.ctx.host, self.ctx.config.agent.state_dir)
        try:
            with journal.locked(on_wait=self._lock_wait):
                revert(self.ctx.host, journal, self.nvml)
        except (JournalError, OSError) as exc:
            self.log.error("revert_failed", error=str(exc))

    # -- prewarm ----------------------------------------------------------------------------------------------------
    def _prewarm(self) -> None:
        pcfg = self.ctx.config.prewarm
        if pcfg is None:
            return
        from vllm_nodeagent import prewarm as pw

        targets, env = pw.config_targets(self.ctx.config)
        if not targets:
            return
        self.notify.status("prewarming")
        last = [-1]

        def progress(done: int, total: int) -> None:  # called from the reader threads
            pct = int(done * 100 / total) if total else 100
            if pct != last[0]:
                last[0] = pct
                self.notify.status(f"prewarming {pct}%")
                self._watchdog(self.clock())  # a stalled prewarm stops pinging

        try:
            budget = pw.budget_from_config(self.ctx.host, pcfg.memory_budget_fraction)
            result = pw.prewarm(targets, host=self.ctx.host, budget_bytes=budget, threads=pcfg.threads,
                                lock=pcfg.lock, progress=progress, hf_cache=pw.hf_cache_dir(env))
        except Exception as exc:  # a failed prewarm must not stop serving; it is logged
            self.log.error("prewarm_failed", error=f"{type(exc).__name__}: {exc}")
            return
        self._prewarm_locked = result.locked  # an mlock handle stays alive while the daemon runs
        self.metrics.set_prewarm_bytes(result.resident_after_bytes)
        for err in result.errors:
            self.log.warning("prewarm_error", detail=err)
        self.log.info("prewarm_done", files=result.files, total_bytes=result.total_bytes,
                      resident_bytes=result.resident_after_bytes, gbps=round(result.gbps, 3),
                      skipped_bytes=result.skipped_bytes, locked=result.locked is not None)

    # -- the child --------------------------------------------------------------------------------------------------
    def _pid_file(self) -> str:
        state = self.ctx.host.path(self.ctx.config.agent.state_dir)
        try:
            state.mkdir(parents=True, exist_ok=True, mode=0o755)
        except OSError as exc:
            self.log.warning("state_dir_unusable", path=str(state), error=str(exc))
            return ""
        return str(state / PID_FILE)

    def _start_child(self, initial: bool) -> bool:
        """Start vLLM and enter "loading". False (initial start only) = a failed start, already logged."""
        now = self.clock()
        try:
            if self.plan is None:
                if self.topo is None:
                    raise LaunchError("no topology")
                self.notify.status("checking vLLM arguments")
                self.plan, _ = build_plan(self.ctx, self.topo, self.gpus_override)
            pid_file = self._pid_file()
            self.child = Child(self.plan, pid_file, self.clock)
            if pid_file:
                write_plan_file(os.path.dirname(pid_file), self.plan, self.child.pid)
        except (LaunchError, OSError) as exc:
            self.log.error("vllm_start_failed", error=str(exc))
            if initial:
                why = f"{exc.filename}: {exc.strerror}" if isinstance(exc, OSError) and exc.strerror else str(exc)
                self.failure = f"cannot start vLLM: {why}"
                self.exit_code = 1
                return False
            self._schedule_restart(now, f"start failed: {exc}")
            return True
        self.pinned = set()
        self.phase = "loading"
        self.load_deadline = now + self.vcfg.start_timeout_s
        self.next_health = now
        self.next_extend = now
        self.next_pin = now + PIN_POLL_S
        self.log.info("vllm_started", pid=self.child.pid, argv=self.plan.argv, user=self.plan.user,
                      binding=self.plan.binding, numa_nodes=self.plan.numa_nodes, gpus=self.plan.gpus)
        for note in self.plan.notes:
            self.log.info("vllm_binding_note", pid=self.child.pid, detail=note)
        self._status_now()
        return True

    def _awaiting_ready(self) -> bool:
        """systemd waits for READY=1: the first start, or a reload that restarts vLLM."""
        return not self.ready_sent or self.reload_pending

    def _check_loading(self, now: float) -> None:
        if self.child is None:
            return
        if self._awaiting_ready() and now >= self.next_extend:
            remaining = self.load_deadline - now
            if remaining > 0:
                self.notify.extend_timeout(min(EXTEND_BY_S, remaining + 5.0))
            self.next_extend = now + EXTEND_EVERY_S
        if now >= self.load_deadline:
            self.log.error("vllm_start_timeout", pid=self.child.pid, start_timeout_s=self.vcfg.start_timeout_s)
            self.child.stop(self.vcfg.stop_timeout_s)
            self.child = None
            self.smoke = None
            if not self.ready_sent:
                self.failure = (f"vLLM was not ready within [vllm] start_timeout_s = "
                                f"{self.vcfg.start_timeout_s:g} s: raise it, or see vLLM's output above")
                self.exit_code = 1
            else:
                self._schedule_restart(now, "start timeout")
            return
        if self.phase == "gating":
            self._check_gate(now)
            return
        if now < self.next_health:
            return
        if not health_ok(self.vcfg.health_url):
            self.next_health = self.clock() + HEALTH_POLL_S
            return
        if self.vcfg.readiness == "health":
            self._child_healthy(self.clock(), "health")
            return
        self.log.info("vllm_health_ok", pid=self.child.pid, load_s=round(self.clock() - self.child.started_at, 3))
        self._start_gate(self.clock())

    def _start_gate(self, now: float) -> None:
        """Second half of the gate: a one-token completion, in a thread; the loop polls it."""
        self.phase = "gating"
        self.smoke = SmokeCheck(self.vcfg)
        self.next_gate = now + GATE_POLL_S
        self._status_now()

    def _check_gate(self, now: float) -> None:
        if now < self.next_gate or self.child is None:
            return
        if self.smoke is None:
            self.smoke = SmokeCheck(self.vcfg)
        result = self.smoke.result()
        if result is None:
            self.next_gate = now + GATE_POLL_S
            return
        self.smoke = None
        ok, detail = result
        if ok:
            self.log.info("vllm_smoke_ok", pid=self.child.pid, detail=detail)
            self._child_healthy(self.clock(), "health+completion")
            return
        # /health said 200 but no token came: not ready. Retry while it runs (a crash is noticed by its exit).
        self.log.warning("vllm_smoke_failed", pid=self.child.pid, detail=detail, retry_in_s=GATE_RETRY_S)
        self.next_gate = now + GATE_RETRY_S

    def _child_healthy(self, now: float, gate: str) -> None:
        """vLLM passed the readiness gate: READY=1 (again after a restart: systemd ignores repeats, a reader of
        the notify stream sees when serving resumed)."""
        if self.child is None or self.plan is None:
            return
        self.child.healthy_since = now
        self.phase = "serving"
        self.health_failures = 0
        self.next_liveness = now + self.vcfg.health_interval_s
        self.metrics.set_up(True)
        self.metrics.set_ready_seconds(now - self.child.started_at)
        self.log.info("vllm_healthy", pid=self.child.pid, load_s=round(now - self.child.started_at, 3),
                      url=self.vcfg.health_url, gate=gate)
        self._verify_binding()
        self.reload_pending = False
        self._send_ready()

    def _liveness(self, now: float) -> None:
        """A vLLM that is alive but no longer answers (a hung engine) is restarted like one that exited."""
        if self.child is None:
            return
        self.next_liveness = now + self.vcfg.health_interval_s
        if health_ok(self.vcfg.health_url):
            self.health_failures = 0
            return
        self.health_failures += 1
        self.log.warning("vllm_health_failed", pid=self.child.pid, url=self.vcfg.health_url,
                         failures=self.health_failures, limit=self.vcfg.unhealthy_after)
        if self.health_failures < self.vcfg.unhealthy_after:
            return
        pid = self.child.pid
        self.log.error("vllm_unhealthy", pid=pid, failures=self.health_failures)
        self.child.stop(self.vcfg.stop_timeout_s)
        self.child = None
        self.health_failures = 0
        self.metrics.set_up(False)
        self._schedule_restart(self.clock(), f"unhealthy: {self.vcfg.unhealthy_after} failed health checks", pid)

    def _verify_binding(self) -> None:
        if self.child is None or self.plan is None:
            return
        procs = live_binding(self.child.pid)
        problems = binding_mismatches(self.plan, procs)
        for p in procs:
            self.log.info("vllm_binding", pid=p["pid"], cpus=p["cpus"], mems=p["mems"], mempolicy=p["mempolicy"])
        for problem in problems:
            self.log.warning("vllm_binding_mismatch", pid=self.child.pid, detail=problem)

    def _child_exited(self, ex: Exit, now: float) -> None:
        self.metrics.set_up(False)
        self.child = None
        self.smoke = None
        if not self.ready_sent:
            self.log.error("vllm_failed_start", pid=ex.pid, result=ex.describe())
            self.failure = f"vLLM (pid {ex.pid}) ended before it was ready: {ex.describe()}; see its output above"
            self.exit_code = 1
            return
        self._schedule_restart(now, ex.describe(), pid=ex.pid)

    def _schedule_restart(self, now: float, why: str, pid: int = 0) -> None:
        delay = self.backoff.next_delay()
        self.phase = "backoff"
        self.restart_at = now + delay
        self.metrics.add_restart()
        self.log.warning("vllm_exited", pid=pid, result=why, restart_in_s=delay, failures=self.backoff.failures)
        if self.backoff.failures >= CRASH_LOOP_AFTER:
            self.log.error("vllm_crash_loop", pid=pid, failures=self.backoff.failures, restart_in_s=delay)
        self._status_now()

    def _pins_pending(self) -> bool:
        return self.plan is not None and len(self.pinned) < len(self.plan.pin)

    def _pin_workers(self) -> None:
        """Binding "numactl+pin": pin each worker (NVML pid → GPU) to its GPU's local CPUs, every thread."""
        if self.plan is None or self.child is None or self.topo is None or not self._pins_pending():
            return
        import psutil

        from vllm_nodeagent.nvml import NvmlCallError

        self._open_nvml()
        if self.nvml is None:
            self.log.warning("worker_pin_unavailable", pid=self.child.pid, reason=self.nvml_error)
            self.plan.pin = {}
            return
        try:
            tree = {self.child.pid} | {c.pid for c in psutil.Process(self.child.pid).children(recursive=True)}
        except psutil.Error:
            return
        for gpu_index, cpus in self.plan.pin.items():
            if gpu_index in self.pinned:
                continue
            gpu = self.topo.gpu(gpu_index)
            if gpu is None:
                continue
            try:
                pids = [p for p in self.nvml.compute_pids(gpu.pci_bus_id) if p in tree]
            except NvmlCallError as exc:
                self.log.warning("worker_pin_failed", gpu=gpu_index, error=str(exc))
                continue
            for pid in pids:
                try:
                    tids = [t.id for t in psutil.Process(pid).threads()]
                    for tid in tids:
                        os.sched_setaffinity(tid, cpus)
                except (psutil.Error, OSError) as exc:
                    self.log.warning("worker_pin_failed", pid=pid, gpu=gpu_index, error=str(exc))
                    continue
                self.log.info("worker_pinned", pid=pid, gpu=gpu_index, cpus=cpus, threads=len(tids))
                self.pinned.add(gpu_index)

    # -- status / ready ---------------------------------------------------------------------------------------------
    def _status_text(self) -> str:
        if self.phase == "loading":
            what = "vLLM loading" if not self.ready_sent else "vLLM restarting (loading)"
            return f"{what}: waiting for {self.vcfg.health_url}"
        if self.phase == "gating":
            what = "vLLM loading" if not self.ready_sent else "vLLM restarting (loading)"
            return f"{what}: health ok, smoke completion"
        if self.phase == "backoff":
            n = self.backoff.failures
            loop = " (crash loop)" if n >= CRASH_LOOP_AFTER else ""
            return f"vLLM exited {n}x in a row{loop}; restarting in {self.restart_at - self.clock():.0f}s"
        if self.phase == "watching":
            return f"watching; {self.drift_count} drift"
        return f"serving; {self.drift_count} drift"

    def _status_now(self) -> None:
        self.notify.status(self._status_text())

    def _send_ready(self) -> None:
        self.ready_sent = True
        self.notify.ready(self._status_text())
        self.log.info("ready", phase=self.phase, pid=self.child.pid if self.child else None)

    # -- reload / stop ----------------------------------------------------------------------------------------------
    def _reload(self) -> None:
        self.notify.reloading()
        old: Config = self.ctx.config
        try:
            new = self.ctx.reload_config()
        except ConfigError as exc:
            self.log.error("config_reload_failed", error=str(exc), kept=old.path)
            self.notify.ready(self._status_text())
            return
        self.ctx.config = new
        self.log.info("config_reloaded", path=new.path)
        if self.metrics.textfile != new.agent.metrics_textfile:
            self.metrics = Metrics(self._textfile(new.agent.metrics_textfile))
        if self.manage_settings:
            self._guarded("settings", self._apply_settings)
        if self.launch_vllm and new.vllm != old.vllm:
            self.log.info("vllm_config_changed", action="restart")
            if self.child is not None:
                self.child.stop(old.vllm.stop_timeout_s if old.vllm else VllmConfig().stop_timeout_s)
                self.child = None
            self.smoke = None
            self.plan = None
            self.backoff = self._new_backoff(new.vllm)
            self.metrics.set_up(False)
            if something_to_launch(new.vllm):
                # READY=1 only once the new vLLM passed the gate (systemd keeps the unit "reloading").
                self.reload_pending = True
                self.next_extend = self.clock()
                self._start_child(initial=False)
                return
            self.phase = "watching"
        self.notify.ready(self._status_text())

    def _stop(self) -> int:
        self.phase = "stopping"
        self.notify.stopping()
        self.log.info("stopping", pid=self.child.pid if self.child else None)
        if self.child is not None:
            self.child.stop(self.vcfg.stop_timeout_s)
            self.child = None
        self.metrics.set_up(False)
        if self.manage_settings and self.ctx.config.agent.revert_on_stop:
            self._revert()
        self.metrics.write()
        self.exit_code = 0
        return 0

    def _shutdown_resources(self) -> None:
        if self.child is not None:  # an unexpected error: never leave vLLM behind
            self.child.stop(self.vcfg.stop_timeout_s)
            self.child = None
        if self._prewarm_locked is not None:
            self._prewarm_locked.release()
            self._prewarm_locked = None
        if self.nvml is not None:
            from vllm_nodeagent.nvml import NvmlCallError

            try:
                self.nvml.close()
            except NvmlCallError as exc:
                self.log.warning("nvml_close_failed", error=str(exc))
            self.nvml = None


def _noop_handler(signum: int, frame: object) -> None:
    """The work happens in the loop; set_wakeup_fd already wrote the signal number to the pipe."""
    return


def cmd_run(ctx: Context, args: argparse.Namespace) -> int:
    """The root unit. In the "split" layout vLLM has its own unit (``serve``): host work only, no prewarm."""
    from vllm_nodeagent.layout import detect

    layout = detect(ctx.host, getattr(args, "layout", "auto"))
    log.get().info("layout", layout=layout.name, reason=layout.reason)
    if layout.split:
        return Daemon(ctx, prewarm=False, launch_vllm=False).run()
    return Daemon(ctx).run()
