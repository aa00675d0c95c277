"""The host side of the daemon: apply the settings at start, then drift checks, doctor's readiness checks and the
heartbeat into the metrics textfile, and the revert on stop where ``[agent] revert_on_stop`` says so. A component of
``loop.Loop``; its next deadline is the next drift check.

``[agent] mode``: ``enforce`` applies at start and on reload and re-applies drift; ``audit`` is read-only from the
first tick: start, reload and drift only verify (no setting written, no journal touched, no revert on stop), and
it says so in STATUS= and in the metrics (``vllm_nodeagent_agent_mode{mode="audit"} 1``). A first fleet wave can
run in audit and see what enforce would change (what ``tuned-adm verify`` gives)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Optional

from vllm_nodeagent.daemon.loop import Status

if TYPE_CHECKING:
    from vllm_nodeagent.config import Config
    from vllm_nodeagent.daemon.loop import Loop


SUMMARY_MAX = 160  # characters of a value in a log line (a governor value names every cpufreq policy)


def summarize(value: Optional[str]) -> Optional[str]:
    """A long per-member value ("policy0=performance policy1=powersave ...") as counts per value and a few
    members: one short log line instead of ~5 KB on a 192-CPU host."""
    if value is None or len(value) <= SUMMARY_MAX:
        return value
    groups: dict[str, list[str]] = {}
    pairs = [p.partition("=") for p in value.split()]
    if not all(sep for _, sep, _ in pairs):
        return value[:SUMMARY_MAX] + f"... ({len(value)} chars)"
    for member, _, v in pairs:
        groups.setdefault(v, []).append(member)
    parts = []
    for v, members in sorted(groups.items(), key=lambda kv: len(kv[1])):
        shown = " ".join(members[:3]) + (" ..." if len(members) > 3 else "")
        parts.append(f"{v} x{len(members)} ({shown})")
    return f"{len(pairs)} members: " + "; ".join(parts)


class HostKeeper:
    name = "host"

    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self.ctx = loop.ctx
        self.log = loop.log
        self.tunables: list[Any] = []
        self.journal: Any = None
        self.drift_count = 0  # drift events (changes), not checks that found a setting drifted
        self.drifted: dict[str, Optional[str]] = {}  # id -> the drifted value last reported
        self.next_drift = 0.0
        self.started = False

    # -- the component -----------------------------------------------------------------------------------------------
    def start(self) -> None:
        self.loop.notify.status("auditing settings (read-only)" if self.audit else "applying settings")
        self.loop.metrics.set_mode(self.ctx.config.agent.mode)
        self.loop.open_nvml()
        self.loop.guarded("settings", self._apply_settings)
        self.next_drift = self.loop.clock() + self.ctx.config.agent.drift_interval_s
        self.started = True  # READY=1 follows even when a setting failed: it is logged, exported and doctor shows it

    @property
    def audit(self) -> bool:
        return self.ctx.config.agent.mode == "audit"

    def ready(self) -> bool:
        return self.started

    def next_deadline(self, now: float) -> float:
        return self.next_drift

    def wait_fds(self) -> list[int]:
        return []

    def tick(self, now: float) -> None:
        if now < self.next_drift:
            return
        # Two boundaries: a bug in drift must not stop the readiness metrics and the heartbeat.
        self.loop.guarded("settings", self._drift)
        self.loop.guarded("readiness", self._readiness)
        self.next_drift = self.loop.clock() + self.ctx.config.agent.drift_interval_s

    def status(self) -> Status:
        facts = f"{self.drift_count} drift"
        return Status("watching", f"{facts}; audit: read-only" if self.audit else facts)

    def reload(self, old: Config, new: Config) -> None:
        self.loop.metrics.set_mode(new.agent.mode)
        self.loop.guarded("settings", self._apply_settings)

    def stop(self) -> None:
        if self.ctx.config.agent.revert_on_stop and self.audit:
            self.log.warning("revert_skipped", reason='[agent] mode = "audit" is read-only: nothing is reverted')
        elif self.ctx.config.agent.revert_on_stop:
            self._revert()

    def close(self) -> None:
        return

    # -- the work ----------------------------------------------------------------------------------------------------
    def _lock_wait(self, message: str) -> None:
        self.log.warning("journal_lock_wait", detail=message)

    def _apply_settings(self) -> bool:
        """Build the tunables from the current config and apply them (audit: verify only). False when any failed."""
        from vllm_nodeagent.settings.engine import CHANGED, FAILED, FAILURES, OK, apply
        from vllm_nodeagent.settings.families import build_tunables
        from vllm_nodeagent.settings.journal import Journal, JournalError

        if self.loop.topo is None:
            return False
        self.tunables = build_tunables(
            self.ctx.config, self.loop.topo, self.ctx.host, self.loop.nvml, self.loop.nvml_error
        )
        if self.audit:
            return self._audit()
        self.journal = Journal(self.ctx.host, self.ctx.config.agent.state_dir)
        try:
            with self.journal.locked(on_wait=self._lock_wait, cancelled=self.loop.pending_stop):
                outcomes = apply(self.tunables, self.journal)
        except (JournalError, OSError) as exc:
            self.log.error("settings_failed", error=str(exc))
            return False
        for o in outcomes:
            if o.status in (OK, CHANGED, FAILED):
                self.loop.metrics.set_compliance(o.id, o.status != FAILED)
        failed = [o.id for o in outcomes if o.status in FAILURES]
        self.log.info(
            "settings_applied",
            total=len(outcomes),
            failed=len(failed),
            changed=sum(1 for o in outcomes if o.status == CHANGED),
        )
        return not failed

    def _audit(self) -> bool:
        """Start and reload in audit mode: read every setting, export compliance, write nothing."""
        from vllm_nodeagent.settings.engine import DRIFTED, FAILED, MISSING, OK, verify

        outcomes = verify(self.tunables)
        for o in outcomes:
            if o.status in (OK, DRIFTED):
                self.loop.metrics.set_compliance(o.id, o.status == OK)
        noncompliant = [o for o in outcomes if o.status in (DRIFTED, FAILED, MISSING)]
        # Found so at start: reported once here; only a later change counts as a drift event.
        self.drifted = {o.id: o.current for o in noncompliant if o.status == DRIFTED}
        for o in noncompliant:
            self.log.warning("not_compliant", id=o.id, current=o.current, desired=o.desired, mode="audit")
        self.log.info("settings_audited", total=len(outcomes), not_compliant=len(noncompliant), mode="audit")
        return not noncompliant

    def _drift(self) -> None:
        """A drift is an event once per change: a setting seen drifted again with the same value is not counted or
        logged again (audit mode used to count and warn at every interval); its return is logged once."""
        if not self.tunables or (self.journal is None and not self.audit):
            return
        from vllm_nodeagent.settings.engine import DRIFTED, FAILED, OK, apply, verify
        from vllm_nodeagent.settings.journal import JournalError

        metrics = self.loop.metrics
        outcomes = verify(self.tunables)
        drifted = [o for o in outcomes if o.status == DRIFTED]
        for o in outcomes:
            if o.status == OK:
                metrics.set_compliance(o.id, True)
                if self.drifted.pop(o.id, None) is not None:
                    self.log.info("drift_resolved", id=o.id, current=summarize(o.current))
        mode = self.ctx.config.agent.mode
        new = [o for o in drifted if self.drifted.get(o.id) != o.current]
        for o in drifted:
            metrics.set_compliance(o.id, False)
            self.drifted[o.id] = o.current
        for o in new:
            self.drift_count += 1
            metrics.add_drift(o.id)
            self.log.warning("drift", id=o.id, current=summarize(o.current), desired=summarize(o.desired), mode=mode)
        if drifted and mode == "enforce" and self.journal is not None:
            ids = {o.id for o in drifted}
            try:
                with self.journal.locked(on_wait=self._lock_wait, cancelled=self.loop.pending_stop):
                    fixed = apply([t for t in self.tunables if t.id in ids], self.journal)
            except (JournalError, OSError) as exc:
                self.log.error("drift_reapply_failed", error=str(exc))
                return
            for o in fixed:
                metrics.set_compliance(o.id, o.status != FAILED)
                if o.status != FAILED:
                    self.drifted.pop(o.id, None)  # fixed: the next change is a new event
        if new:
            self.loop.status_now()

    def _readiness(self) -> None:
        """Doctor's readiness checks as textfile metrics, and the heartbeat (issue 16)."""
        metrics = self.loop.metrics
        if not metrics.enabled:
            return
        if self.loop.topo is not None:
            from vllm_nodeagent.checks import Probe, run_all

            results = run_all(Probe(self.ctx.host, self.ctx.config, self.loop.topo, self.loop.nvml))
            metrics.set_checks({r.id: r.status.metric for r in results})
        metrics.checked(time.time())

    def _revert(self) -> None:
        from vllm_nodeagent.settings.journal import Journal, JournalError
        from vllm_nodeagent.settings.restore import revert

        journal = self.journal or Journal(self.ctx.host, self.ctx.config.agent.state_dir)
        try:
            # the stop itself was a SIGTERM: only a further one gives up the wait
            with journal.locked(on_wait=self._lock_wait, cancelled=self.loop.stop_signalled):
                revert(self.ctx.host, journal, self.loop.nvml)
        except (JournalError, OSError) as exc:
            self.log.error("revert_failed", error=str(exc))
