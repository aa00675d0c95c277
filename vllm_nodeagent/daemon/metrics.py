"""Prometheus textfile for node_exporter's textfile collector (``[agent] metrics_textfile``).

Own CollectorRegistry (no process/platform collectors: node_exporter scrapes the file, not us); written
atomically with ``write_to_textfile`` (temp file + rename). prometheus_client is imported only when a textfile
is configured, so an agent without metrics does not pay for it.
"""

from __future__ import annotations

from typing import Any

from vllm_nodeagent import log


class Metrics:
    def __init__(self, textfile: str) -> None:
        self.textfile = textfile
        self._write_failed = False
        self._dirty = False
        if not textfile:
            return
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.compliant = Gauge(
            "vllm_nodeagent_setting_compliant",
            "1 when the managed setting holds its desired value, 0 when not",
            ["id"],
            registry=r,
        )
        self.drift = Counter(
            "vllm_nodeagent_drift_events", "Settings found changed behind the agent's back", ["id"], registry=r
        )
        self.drift_total = Counter("vllm_nodeagent_drift", "Drift events, all settings", registry=r)
        self.prewarm_bytes = Gauge(
            "vllm_nodeagent_prewarm_resident_bytes",
            "Bytes of the prewarm targets resident in the page cache after prewarm",
            registry=r,
        )
        self.restarts = Counter("vllm_nodeagent_vllm_restarts", "vLLM restarts after unexpected exits", registry=r)
        self.up = Gauge("vllm_nodeagent_vllm_up", "1 while vLLM runs and passed the readiness gate", registry=r)
        self.ready_seconds = Gauge(
            "vllm_nodeagent_vllm_ready_seconds",
            "Seconds from the last vLLM start to passing the readiness gate",
            registry=r,
        )
        self.check_status = Gauge(
            "vllm_nodeagent_check_status",
            "Readiness check result (doctor's checks): 0 pass, 1 warn, 2 fail, -1 skip",
            ["id"],
            registry=r,
        )
        self.component_failures = Counter(
            "vllm_nodeagent_component_failures",
            "Errors caught at a daemon component's failure boundary (logged as component_failed)",
            ["component"],
            registry=r,
        )
        # A heartbeat: the file's mtime freezes while nothing changes, so a dead agent would look alive.
        self.last_check = Gauge(
            "vllm_nodeagent_last_check_timestamp_seconds",
            "Unix time of the agent's last drift and readiness check",
            registry=r,
        )

    @property
    def enabled(self) -> bool:
        return bool(self.textfile)

    def set_compliance(self, setting_id: str, ok: bool) -> None:
        if self.textfile:
            self.compliant.labels(id=setting_id).set(1 if ok else 0)
            self._dirty = True

    def add_drift(self, setting_id: str) -> None:
        if self.textfile:
            self.drift.labels(id=setting_id).inc()
            self.drift_total.inc()
            self._dirty = True

    def set_prewarm_bytes(self, value: int) -> None:
        if self.textfile:
            self.prewarm_bytes.set(value)
            self._dirty = True

    def add_restart(self) -> None:
        if self.textfile:
            self.restarts.inc()
            self._dirty = True

    def add_component_failure(self, component: str) -> None:
        if self.textfile:
            self.component_failures.labels(component=component).inc()
            self._dirty = True

    def set_up(self, up: bool) -> None:
        if self.textfile:
            self.up.set(1 if up else 0)
            self._dirty = True

    def set_ready_seconds(self, seconds: float) -> None:
        if self.textfile:
            self.ready_seconds.set(round(seconds, 3))
            self._dirty = True

    def set_checks(self, statuses: dict[str, int]) -> None:
        """Readiness check results by id (values from checks.STATUS_VALUE)."""
        if self.textfile:
            for cid, value in statuses.items():
                self.check_status.labels(id=cid).set(value)
            self._dirty = True

    def heartbeat(self, unix_time: float) -> None:
        if self.textfile:
            self.last_check.set(unix_time)
            self._dirty = True

    def write(self, force: bool = False) -> None:
        """Write the file if anything changed (or ``force``); a failure is logged, never fatal."""
        if not self.textfile or not (self._dirty or force):
            return
        from prometheus_client import write_to_textfile

        try:
            write_to_textfile(self.textfile, self.registry)
            self._dirty = False
            self._write_failed = False
        except OSError as exc:
            if not self._write_failed:  # once per outage, not once per loop turn
                log.get().warning("metrics_write_failed", path=self.textfile, error=str(exc))
            self._write_failed = True

    def sample(self) -> dict[str, Any]:
        """The current values (for tests and the debug log)."""
        if not self.textfile:
            return {}
        from prometheus_client import generate_latest

        return {"text": generate_latest(self.registry).decode()}
