"""The daemon's loop: a small scheduler over components (issue 15).

A component (``host_keeper.HostKeeper``: settings, drift, readiness metrics; ``serve_keeper.ServeKeeper``: prewarm,
vLLM and its supervision) owns its state and exposes ``next_deadline(now)`` and ``tick(now)``. The loop owns no
component state: it runs their start-up steps in order, then sleeps in ``select`` until the earliest deadline (or
a signal, or a component's fd such as vLLM's pidfd) and ticks the components that are due, each behind its own
failure boundary: an exception is logged with its traceback (``component_failed``), counted, and the component is
ticked again when due, at the earliest ``RETRY_AFTER_FAILURE_S`` later; the others go on. Only a stop request (or
vLLM failing its first start) ends the loop.

Signals only write their number into a self-pipe (``signal.set_wakeup_fd``; the Python handlers do nothing).
The loop also owns what every component reports through: the watchdog, READY/RELOADING/STOPPING and STATUS (one
line composed from the components' parts), and the metrics textfile, written after each round.

``run --layout single`` = Loop(host + serve), ``--layout split`` = Loop(host), ``serve`` and ``launch`` =
Loop(serve).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import select
import signal
import time
import traceback
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Optional, Protocol

from vllm_nodeagent import log
from vllm_nodeagent.config import Config, ConfigError
from vllm_nodeagent.daemon.metrics import Metrics, resolve_textfile
from vllm_nodeagent.daemon.notify import Notifier, monotonic_usec
from vllm_nodeagent.daemon.reload_ack import ReloadAck, ack_path, write_ack

if TYPE_CHECKING:
    from vllm_nodeagent.context import Context
    from vllm_nodeagent.nvml import Nvml
    from vllm_nodeagent.topology import Topology

_HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
RETRY_AFTER_FAILURE_S = 1.0  # a component whose tick raised waits this long (its timers may not have moved on)


class Status(NamedTuple):
    """A component's part of STATUS=. ``alone``: a phase that speaks for the whole daemon (vLLM loading, restarting);
    else the line is the leading phase ("serving" wins over "watching") and every component's facts ("3 drift")."""

    phase: str = "watching"
    facts: str = ""
    alone: bool = False


class Component(Protocol):
    name: str  # its failure boundary's name in component_failed events and the failure counter

    def start(self) -> None:
        """Blocking start-up work, in the order the components were added (settings before prewarm and vLLM)."""

    def ready(self) -> bool:
        """May READY=1 go out (the host tuned; vLLM past the readiness gate)?"""

    def next_deadline(self, now: float) -> float:
        """When it wants its next tick (monotonic seconds); math.inf for never."""

    def wait_fds(self) -> list[int]:
        """File descriptors whose readability makes it due now (vLLM's pidfd)."""

    def tick(self, now: float) -> None:
        """Do what is due; a component tolerates a tick before its deadline."""

    def status(self) -> Status: ...

    def reload(self, old: Config, new: Config) -> None:
        """SIGHUP: the new config is in ctx.config already. One that restarts what READY=1 promised (vLLM) sets
        ``loop.reload_pending``: READY=1 then waits for ``component_ready()`` (systemd keeps it "reloading")."""

    def stop(self) -> None:
        """SIGTERM: stop vLLM; revert settings where configured."""

    def close(self) -> None:
        """Always, also after an unexpected error: release what it holds (never leave vLLM behind)."""


class Loop:
    def __init__(
        self,
        ctx: Context,
        *,
        topology: Optional[Topology] = None,
        notifier: Optional[Notifier] = None,
        clock: Callable[[], float] = time.monotonic,
        export_metrics: bool = True,
        reload_ack: Optional[str] = None,
    ) -> None:
        self.ctx = ctx
        self.topo = topology
        self.notify = notifier or Notifier()
        self.clock = clock
        self.log = log.get()
        self.export_metrics = export_metrics  # False: the serve unit (the textfile is the root unit's)
        self.metrics = self._new_metrics(ctx.config)
        self.components: list[Component] = []
        self.nvml: Optional[Nvml] = None
        self.nvml_error = ""
        self.ready_sent = False
        self.reload_pending = False  # RELOADING=1 sent; a component restarted: READY=1 once all are ready again
        self.reload_ack = ack_path() if reload_ack is None else reload_ack  # "" = nobody waits (not systemd)
        self._reload_usec = 0  # when the SIGHUP being handled was taken in: the ack names it
        self.failures: dict[str, int] = {}  # component_failed per boundary
        self.retry_after_failure_s = RETRY_AFTER_FAILURE_S
        self._held: dict[Component, float] = {}  # not ticked before (after a failed tick): no busy loop of tracebacks
        self.exit_code: Optional[int] = None
        self.failure = ""  # why the daemon gave up, in one sentence (launch prints it as its one error line)
        self.prints_failure = False  # launch: the failure is its one error line, so components do not log it too
        self.next_watchdog = 0.0
        self._stop_requested = False
        self._stops = 0  # SIGTERM/SIGINT seen (stop_signalled compares)
        self._rfd, self._wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._old_handlers: dict[int, Any] = {}
        self._old_wakeup = -1

    def add(self, component: Component) -> None:
        self.components.append(component)

    def _textfile(self, path: str) -> str:
        """The metrics file as a host path ("auto": this distro's node_exporter directory); "" = none."""
        return resolve_textfile(self.ctx.host, path) if path and self.export_metrics else ""

    def _new_metrics(self, config: Config) -> Metrics:
        from vllm_nodeagent.serving.plan import something_to_launch

        metrics = Metrics(self._textfile(config.agent.metrics_textfile), self.ctx.host)
        metrics.set_expected(something_to_launch(config.vllm))
        return metrics

    # -- requests from outside the loop (tests, or another thread) -------------------------------------------------
    def request(self, sig: int) -> None:
        """Deliver ``sig`` to the loop as if it had been received (SIGTERM, SIGHUP)."""
        os.write(self._wfd, bytes([sig]))

    # -- services for the components ---------------------------------------------------------------------------------
    def guarded(self, boundary: str, step: Callable[[], object]) -> bool:
        """One failure boundary: a bug or an OS error in ``step`` is logged with its traceback and counted; the
        caller (and every other component) goes on. False when it failed."""
        try:
            step()
            return True
        except Exception as exc:
            self.failures[boundary] = self.failures.get(boundary, 0) + 1
            self.log.error(
                "component_failed",
                component=boundary,
                error=f"{type(exc).__name__}: {exc}",
                failures=self.failures[boundary],
                traceback=traceback.format_exc(),
            )
            with contextlib.suppress(Exception):  # counting must not become a second failure
                self.metrics.add_component_failure(boundary)
            return False

    def open_nvml(self) -> None:
        if self.nvml is None:
            self.nvml, self.nvml_error = self.ctx.open_nvml()

    def watchdog(self, now: float) -> None:
        if self.notify.watchdog_interval_s and now >= self.next_watchdog:
            self.notify.watchdog()
            self.next_watchdog = now + self.notify.watchdog_interval_s

    def pending_stop(self) -> bool:
        """A SIGTERM that arrived during a blocking start-up step is honoured before the next one; a wait
        (the journal lock, the argument probe) asks this to end early."""
        for sig in self._drain():
            if sig in (signal.SIGTERM, signal.SIGINT):
                self._stop_requested = True
                self._stops += 1
            elif sig == signal.SIGHUP:
                os.write(self._wfd, bytes([signal.SIGHUP]))  # handled once the loop runs
        return self._stop_requested

    def stop_signalled(self) -> bool:
        """A SIGTERM/SIGINT arrived since the last look: a stop's TERM grace (vLLM's, its leftovers') ends and
        KILL follows — a second Ctrl-C during a stop, or a stop during a restart's wait."""
        before = self._stops
        self.pending_stop()
        return self._stops > before

    def fail(self, why: str, code: int = 1) -> None:
        """A component gives up (vLLM's first start failed): the loop ends with ``code``."""
        if why:
            self.failure = why
        self.exit_code = code

    def status_text(self) -> str:
        parts = [c.status() for c in self.components]
        for part in parts:
            if part.alone:
                return part.phase
        phase = next((p.phase for p in parts if p.phase != "watching"), "watching")
        return "; ".join([phase] + [p.facts for p in parts if p.facts])

    def status_now(self) -> None:
        self.notify.status(self.status_text())

    def component_ready(self) -> None:
        """A component became ready (the host tuned, vLLM passed the gate): READY=1 once all are. Sent again after
        a vLLM restart: systemd ignores the repeat, a reader of the notify stream sees when serving resumed."""
        if all(c.ready() for c in self.components):
            self.ready_sent = True
            text = self.status_text()
            # The textfile first: whoever READY=1 wakes (systemd, a rollout, a test) reads vllm_up 1 already;
            # at the round's end it was written after READY (seen in CI: read between the two, up 0).
            self.guarded("metrics", self.metrics.write)
            self.notify.ready(text)
            self.log.info("ready", status=text)
            if self.reload_pending:
                self.reload_pending = False
                self._ack_reload(ReloadAck(self._reload_usec, True, ""))

    # -- signals -----------------------------------------------------------------------------------------------------
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

    # -- the run -----------------------------------------------------------------------------------------------------
    def run(self) -> int:
        self._install_signals()
        try:
            return self._run()
        finally:
            for c in reversed(self.components):
                self.guarded(c.name, c.close)
            self._close_nvml()
            self._restore_signals()
            os.close(self._rfd)
            os.close(self._wfd)

    def _run(self) -> int:
        t0 = self.clock()
        self.next_watchdog = t0
        self.watchdog(t0)
        if self.topo is None:
            self.notify.status("discovering topology")
            from vllm_nodeagent.topology import discover_with_nvml

            self.topo = discover_with_nvml(self.ctx)
        for c in self.components:
            if self.pending_stop():
                return self._stop()
            c.start()
            if self.exit_code is not None:
                return self.exit_code
        if self.pending_stop():
            return self._stop()
        self.component_ready()
        self.log.info("daemon_started", status=self.status_text(), startup_s=round(self.clock() - t0, 3))
        return self._loop()

    def _deadline(self, c: Component, now: float) -> float:
        held = self._held.get(c, -math.inf)
        if now < held:
            return held
        deadline = [now]
        if not self.guarded(c.name, lambda: deadline.__setitem__(0, c.next_deadline(now))):
            self._held[c] = now + self.retry_after_failure_s
            return self._held[c]
        return max(deadline[0], held)

    def next_deadline(self, now: float) -> float:
        deadlines = [self._deadline(c, now) for c in self.components]
        if self.notify.watchdog_interval_s:
            deadlines.append(self.next_watchdog)
        return min(deadlines, default=math.inf)

    def _loop(self) -> int:
        while self.exit_code is None:
            now = self.clock()
            deadline = self.next_deadline(now)
            timeout = None if math.isinf(deadline) else max(0.0, deadline - now)
            owners = {fd: c for c in self.components if self._held.get(c, -math.inf) <= now for fd in c.wait_fds()}
            readable: list[int] = []
            with contextlib.suppress(InterruptedError):
                readable = select.select([self._rfd, *owners], [], [], timeout)[0]
            for sig in self._drain():
                if sig in (signal.SIGTERM, signal.SIGINT):
                    return self._stop()
                if sig == signal.SIGHUP:
                    self._reload()
            self.tick(self.clock(), woken=[owners[fd] for fd in readable if fd in owners])
            if self._stop_requested:  # seen by a wait inside the tick (pending_stop drained it)
                return self._stop()
        return self.exit_code

    def tick(self, now: float, woken: Optional[list[Component]] = None) -> None:
        """One round: the watchdog, every component that is due (or whose fd woke the loop), each behind its own
        boundary, then the metrics file."""
        self.watchdog(now)
        for c in self.components:
            if now < self._held.get(c, -math.inf):
                continue
            if (woken and c in woken) or self._deadline(c, now) <= now:
                if not self.guarded(c.name, functools.partial(c.tick, now)):
                    self._held[c] = now + self.retry_after_failure_s
                if self.exit_code is not None:
                    return
        self.metrics.heartbeat(time.time())
        self.guarded("metrics", self.metrics.write)

    # -- reload / stop -----------------------------------------------------------------------------------------------
    def _ack_reload(self, ack: ReloadAck) -> None:
        """Tell ``vllm-nodeagent reload`` (ExecReload=) that this reload is over; it waits for nothing else."""
        if self.reload_ack:
            self.guarded("reload", lambda: write_ack(self.ctx.host, self.reload_ack, ack))

    def _reload(self) -> None:
        self._reload_usec = monotonic_usec()
        self.notify.reloading()
        old: Config = self.ctx.config
        try:
            new = self.ctx.reload_config()
        except ConfigError as exc:
            self.log.error("config_reload_failed", error=str(exc), kept=old.path)
            self.notify.ready(self.status_text())
            self._ack_reload(ReloadAck(self._reload_usec, False, f"{exc} (the running config is kept)"))
            return
        self.ctx.config = new
        self.log.info("config_reloaded", path=new.path)
        if self.metrics.textfile != self._textfile(new.agent.metrics_textfile):
            self.metrics = self._new_metrics(new)
        else:
            from vllm_nodeagent.serving.plan import something_to_launch

            self.metrics.set_expected(something_to_launch(new.vllm))
        for c in self.components:
            self.guarded(c.name, functools.partial(c.reload, old, new))
        if not self.reload_pending:  # a component that restarted (vLLM) sends READY=1 once it is ready again
            self.notify.ready(self.status_text())
            self._ack_reload(ReloadAck(self._reload_usec, True, ""))

    def _stop(self) -> int:
        """Stop fans out to every component, the last added first (vLLM stops before settings are reverted)."""
        self.notify.stopping()
        self.log.info("stopping", components=[c.name for c in self.components])
        for c in reversed(self.components):
            self.guarded(c.name, c.stop)
        self.guarded("metrics", self.metrics.write)
        self.exit_code = 0
        return 0

    def _close_nvml(self) -> None:
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
