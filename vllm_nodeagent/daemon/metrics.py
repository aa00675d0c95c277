"""Prometheus textfile for node_exporter's textfile collector (``[agent] metrics_textfile``); the contract is
docs/metrics.md (a test compares that table with ``FAMILIES`` and with what ``render`` writes).

The text format is rendered here, from one table of families: no ``_created`` series (noise for a textfile),
counters start at 0 so ``increase()`` sees the first event, and nothing of prometheus_client's default registry.
The file is replaced by the agent's one atomic writer (``host.fsafe``), walked with no link followed: on Debian
the directory sits below ``/var/lib/prometheus``, which the ``prometheus`` user owns; the directory itself must be
root's and writable by nobody else.
"""

from __future__ import annotations

import math
import platform
from typing import TYPE_CHECKING, NamedTuple, Optional

from vllm_nodeagent import __version__, log
from vllm_nodeagent.host import HostError, fsafe
from vllm_nodeagent.textfile import DEBIAN_DIR, FILE_NAME, GENERIC_DIR, default_textfile, resolve_textfile

if TYPE_CHECKING:
    from vllm_nodeagent.host import Host

__all__ = ["DEBIAN_DIR", "FAMILIES", "FILE_NAME", "GENERIC_DIR", "Metrics", "default_textfile", "resolve_textfile"]

DIR_MODE = 0o755  # node_exporter (its own user) must list and read it
FILE_MODE = 0o644


class Family(NamedTuple):
    name: str  # as exposed (counters with their _total)
    type: str  # gauge | counter
    unit: str
    labels: tuple[str, ...]
    help: str


FAMILIES = (
    Family("vllm_nodeagent_build_info", "gauge", "1", ("version", "python"), "Always 1; the agent build writing"),
    Family(
        "vllm_nodeagent_heartbeat_timestamp_seconds",
        "gauge",
        "seconds",
        (),
        "Unix time of the daemon loop's last round (every drift_interval_s at least); stale = agent dead or hung",
    ),
    Family(
        "vllm_nodeagent_last_check_timestamp_seconds",
        "gauge",
        "seconds",
        (),
        "Unix time of the agent's last drift and readiness check",
    ),
    Family(
        "vllm_nodeagent_agent_mode",
        "gauge",
        "bool",
        ("mode",),
        'A state set of [agent] mode: "enforce" writes settings, "audit" is read-only; the current one 1',
    ),
    Family(
        "vllm_nodeagent_setting_compliant",
        "gauge",
        "bool",
        ("id",),
        "1 when the managed setting holds its desired value, 0 when not (drifted or failed to apply)",
    ),
    Family(
        "vllm_nodeagent_drift_events_total",
        "counter",
        "events",
        ("id",),
        "Drift events: a setting found changed behind the agent's back, once per change (not per check)",
    ),
    Family("vllm_nodeagent_drift_total", "counter", "events", (), "Drift events, all settings"),
    Family(
        "vllm_nodeagent_prewarm_resident_bytes",
        "gauge",
        "bytes",
        (),
        "Bytes of the prewarm targets resident in the page cache after prewarm",
    ),
    Family(
        "vllm_nodeagent_prewarm_resident_ratio",
        "gauge",
        "ratio",
        (),
        "Resident fraction (0-1) of the prewarm targets after prewarm",
    ),
    Family("vllm_nodeagent_vllm_expected", "gauge", "bool", (), "1 when the config has vLLM to serve on this node"),
    Family("vllm_nodeagent_vllm_up", "gauge", "bool", (), "1 while vLLM runs and passed the readiness gate"),
    Family(
        "vllm_nodeagent_vllm_phase",
        "gauge",
        "bool",
        ("phase",),
        "1 for vLLM's current phase (init, loading, gating, serving, backoff, watching, stopping, down), 0 others",
    ),
    Family(
        "vllm_nodeagent_vllm_ready_seconds",
        "gauge",
        "seconds",
        (),
        "Seconds from the last vLLM start to passing the readiness gate (time to READY)",
    ),
    Family("vllm_nodeagent_vllm_restarts_total", "counter", "restarts", (), "vLLM restarts after unexpected exits"),
    Family(
        "vllm_nodeagent_vllm_gate_failures_total",
        "counter",
        "failures",
        (),
        "Readiness gate failures: a smoke completion that failed, or a start that timed out",
    ),
    Family(
        "vllm_nodeagent_check_status",
        "gauge",
        "status",
        ("id",),
        "Doctor's readiness check result by id: 0 pass, 1 warn, 2 fail, -1 skip",
    ),
    Family(
        "vllm_nodeagent_component_failures_total",
        "counter",
        "errors",
        ("component",),
        "Errors caught at a daemon component's failure boundary (logged as component_failed)",
    ),
)
BY_NAME = {f.name: f for f in FAMILIES}
PHASES = ("init", "loading", "gating", "serving", "backoff", "watching", "stopping", "down")
ZERO_AT_START = (
    "vllm_nodeagent_drift_total",
    "vllm_nodeagent_vllm_restarts_total",
    "vllm_nodeagent_vllm_gate_failures_total",
    "vllm_nodeagent_vllm_up",
    "vllm_nodeagent_vllm_expected",
)

Labels = tuple[str, ...]


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """``host_path``: the textfile as a host path (under ``host``'s root); "" = off."""

    def __init__(self, host_path: str = "", host: Optional[Host] = None) -> None:
        self.textfile = host_path
        self.root = str(host.root) if host is not None else "/"
        self._values: dict[str, dict[Labels, float]] = {f.name: {} for f in FAMILIES}
        self._write_failed = False
        self._dirty = False
        if not host_path:
            return
        self._set("vllm_nodeagent_build_info", 1, (__version__, platform.python_version()))
        for name in ZERO_AT_START:
            self._set(name, 0)

    @property
    def enabled(self) -> bool:
        return bool(self.textfile)

    # -- the values --------------------------------------------------------------------------------------------------
    def _set(self, name: str, value: float, labels: Labels = ()) -> None:
        if self.textfile:
            self._values[name][labels] = value
            self._dirty = True

    def _inc(self, name: str, labels: Labels = (), by: float = 1) -> None:
        if self.textfile:
            series = self._values[name]
            series[labels] = series.get(labels, 0) + by
            self._dirty = True

    def value(self, name: str, *labels: str) -> Optional[float]:
        """The current value of one series (tests, the debug log)."""
        return self._values[name].get(tuple(labels))

    def set_mode(self, mode: str) -> None:
        for m in ("enforce", "audit"):
            self._set("vllm_nodeagent_agent_mode", 1 if m == mode else 0, (m,))

    def set_compliance(self, setting_id: str, ok: bool) -> None:
        self._set("vllm_nodeagent_setting_compliant", 1 if ok else 0, (setting_id,))
        if self.textfile:  # each managed setting's event counter exists from 0: increase() sees its first drift
            self._values["vllm_nodeagent_drift_events_total"].setdefault((setting_id,), 0)

    def add_drift(self, setting_id: str) -> None:
        """One drift event (a change of the setting, not a check that found it still changed)."""
        self._inc("vllm_nodeagent_drift_events_total", (setting_id,))
        self._inc("vllm_nodeagent_drift_total")

    def set_prewarm(self, resident_bytes: int, ratio: float) -> None:
        self._set("vllm_nodeagent_prewarm_resident_bytes", resident_bytes)
        self._set("vllm_nodeagent_prewarm_resident_ratio", round(ratio, 4))

    def set_prewarm_bytes(self, value: int) -> None:
        self._set("vllm_nodeagent_prewarm_resident_bytes", value)

    def add_restart(self) -> None:
        self._inc("vllm_nodeagent_vllm_restarts_total")

    def add_gate_failure(self) -> None:
        self._inc("vllm_nodeagent_vllm_gate_failures_total")

    def add_component_failure(self, component: str) -> None:
        self._inc("vllm_nodeagent_component_failures_total", (component,))

    def set_up(self, up: bool) -> None:
        self._set("vllm_nodeagent_vllm_up", 1 if up else 0)

    def set_expected(self, expected: bool) -> None:
        self._set("vllm_nodeagent_vllm_expected", 1 if expected else 0)

    def set_phase(self, phase: str) -> None:
        """A state set: every known phase is a series, the current one is 1 (so a dashboard can count them)."""
        if phase not in PHASES:
            phase = "init"
        for p in PHASES:
            self._set("vllm_nodeagent_vllm_phase", 1 if p == phase else 0, (p,))

    def set_ready_seconds(self, seconds: float) -> None:
        self._set("vllm_nodeagent_vllm_ready_seconds", round(seconds, 3))

    def set_checks(self, statuses: dict[str, int]) -> None:
        """Readiness check results by id (values: checks.status.Status.metric)."""
        for cid, value in statuses.items():
            self._set("vllm_nodeagent_check_status", value, (cid,))

    def checked(self, unix_time: float) -> None:
        """The drift and readiness checks ran."""
        self._set("vllm_nodeagent_last_check_timestamp_seconds", unix_time)

    def heartbeat(self, unix_time: float) -> None:
        """The loop went round (every round writes the file: a frozen value means the agent is gone)."""
        self._set("vllm_nodeagent_heartbeat_timestamp_seconds", unix_time)

    # -- the file ----------------------------------------------------------------------------------------------------
    def render(self) -> str:
        out: list[str] = []
        for f in FAMILIES:
            series = self._values[f.name]
            if not series:
                continue
            out.append(f"# HELP {f.name} {f.help}")
            out.append(f"# TYPE {f.name} {f.type}")
            for labels, value in sorted(series.items()):
                shown = ",".join(f'{k}="{_escape(v)}"' for k, v in zip(f.labels, labels))
                out.append(f"{f.name}{{{shown}}} {_fmt(value)}" if shown else f"{f.name} {_fmt(value)}")
        return "\n".join(out) + "\n" if out else ""

    def write(self, force: bool = False) -> None:
        """Write the file if anything changed (or ``force``); a failure is logged once per outage, never fatal.
        A missing directory is created (root, 0755); a link anywhere on the way is refused."""
        if not self.textfile or not (self._dirty or force):
            return
        try:
            # The one atomic writer (host/fsafe): random O_EXCL temp name in the directory's fd, fsync, rename by
            # fd. No link is followed on the way (Debian: /var/lib/prometheus is the prometheus user's); the
            # directory itself must be root's and writable by nobody else, or the write is refused in one line.
            data = self.render().encode()
            fsafe.replace_file(self.root, self.textfile, data, "metrics textfile", FILE_MODE, None, DIR_MODE, True)
            self._dirty = False
            if self._write_failed:
                log.get().info("metrics_write_resumed", path=self.textfile)
            self._write_failed = False
        except HostError as exc:
            if not self._write_failed:
                log.get().warning(
                    "metrics_write_failed",
                    path=self.textfile,
                    at=exc.path or self.textfile,
                    error=str(exc),
                    hint="see doctor's agent.metrics_textfile check",
                )
            self._write_failed = True

    def sample(self) -> dict[str, str]:
        """The current text (for tests and the debug log)."""
        return {"text": self.render()} if self.textfile else {}
