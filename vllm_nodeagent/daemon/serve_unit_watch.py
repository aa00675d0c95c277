"""The host agent's view of vLLM in the split layout: vLLM runs in its own unit, so ``vllm_nodeagent_vllm_up`` and
``vllm_nodeagent_vllm_restarts_total`` in the root unit's metrics textfile come from systemd's record of that unit
(``ActiveState``, ``NRestarts``) instead of staying 0. The serve unit cannot write the textfile itself: its sandbox
(ProtectSystem=strict, user vllm) keeps it out of node_exporter's directory, on purpose.

A ``Type=notify`` unit is "active" only after its READY=1, which the serve mode sends once vLLM passed the readiness
gate: active = serving. Never gates the host agent's own READY (the serve unit is ordered after it).
"""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING, Callable, Optional

from vllm_nodeagent.daemon.loop import Status
from vllm_nodeagent.host import subp
from vllm_nodeagent.serving.layout import SERVE_UNIT, SYSTEMCTL_TIMEOUT_S

if TYPE_CHECKING:
    from vllm_nodeagent.config import Config
    from vllm_nodeagent.daemon.loop import Loop

POLL_S = 15.0
PROPERTIES = ("ActiveState", "NRestarts")

# The serve unit's ActiveState as vllm_nodeagent_vllm_phase (its own phases are in its journal): "activating" is
# prewarm + load + gate (READY=1 comes after the gate), and also systemd's restart wait.
UNIT_PHASE = {"active": "serving", "activating": "loading", "reloading": "loading", "deactivating": "stopping"}

# () -> systemctl show's "Key=value" lines for PROPERTIES ("" when systemd did not answer)
UnitShow = Callable[[], str]


def parse_show(text: str) -> dict[str, str]:
    """``systemctl show -p A -p B``'s ``A=x`` lines as a dict (pure)."""
    props: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            props[key.strip()] = value.strip()
    return props


def systemctl_show() -> str:
    exe = shutil.which("systemctl")
    if exe is None:
        return ""
    argv = [exe, "show", SERVE_UNIT, *(f"--property={p}" for p in PROPERTIES)]
    try:
        return subp.run(argv, SYSTEMCTL_TIMEOUT_S, subp.without_notify()).stdout
    except subp.CommandError:
        return ""


class ServeUnitWatch:
    name = "serve-unit"

    def __init__(self, loop: Loop, show: Optional[UnitShow] = None) -> None:
        self.loop = loop
        self.show = show or systemctl_show
        self.state = "unknown"
        self.restarts_seen: Optional[int] = None
        self.next_poll = 0.0

    def start(self) -> None:
        self._poll()

    def ready(self) -> bool:
        return True

    def next_deadline(self, now: float) -> float:
        return self.next_poll

    def wait_fds(self) -> list[int]:
        return []

    def tick(self, now: float) -> None:
        if now >= self.next_poll:
            self._poll()

    def status(self) -> Status:
        return Status("watching", f"vLLM unit {self.state}")

    def reload(self, old: Config, new: Config) -> None:
        return

    def stop(self) -> None:
        return

    def close(self) -> None:
        return

    def _poll(self) -> None:
        self.next_poll = self.loop.clock() + POLL_S
        props = parse_show(self.show())
        state = props.get("ActiveState", "")
        if not state:
            self.state = "unknown"
            return  # no answer: keep the last exported values rather than claim vLLM is down
        if state != self.state:
            self.loop.log.info("serve_unit_state", unit=SERVE_UNIT, state=state, was=self.state)
        self.state = state
        self.loop.metrics.set_up(state == "active")
        self.loop.metrics.set_phase(UNIT_PHASE.get(state, "down"))
        try:
            restarts = int(props.get("NRestarts", ""))
        except ValueError:
            return  # systemd before 235 has no NRestarts
        if self.restarts_seen is not None and restarts > self.restarts_seen:
            for _ in range(restarts - self.restarts_seen):
                self.loop.metrics.add_restart()
        # A lower count means systemd reset it (a manual start): count from there.
        self.restarts_seen = restarts
