"""Which unit layout this host runs: "split" (two units) or "single" (one unit does everything).

* split: ``vllm-nodeagent.service`` (root) does host work only; ``vllm-nodeagent-serve.service`` (user
  ``vllm``, its main process ``vllm-nodeagent serve``) owns vLLM. Restarting or upgrading the host agent never
  touches vLLM.
* single: ``vllm-nodeagent run`` also launches and supervises vLLM (installs from before the split, hosts
  without systemd, and ``run`` started by hand).

``run --layout auto`` (the default) picks split exactly when systemd runs this host and the serve unit is
enabled or active: enabling the serve unit is the one switch. The package turns it on for an upgraded install
that was serving (postinstall); ``systemctl disable --now vllm-nodeagent-serve`` + a host agent restart goes
back to single.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import Callable, Optional

from vllm_nodeagent.host import Host, subp

HOST_UNIT = "vllm-nodeagent.service"
SERVE_UNIT = "vllm-nodeagent-serve.service"
SERVE_RUNTIME_DIR = "/run/vllm-nodeagent-serve"  # the serve unit's RuntimeDirectory=: its vLLM pid file
SPLIT, SINGLE = "split", "single"
LAYOUT_CHOICES = ("auto", SPLIT, SINGLE)
SYSTEMCTL_TIMEOUT_S = 10.0

# ("is-enabled" | "is-active", unit) -> systemctl's one-word answer ("" when it cannot answer)
UnitQuery = Callable[[str, str], str]


@dataclass(frozen=True)
class Layout:
    name: str  # SPLIT | SINGLE
    reason: str  # why, for the log and doctor

    @property
    def split(self) -> bool:
        return self.name == SPLIT


def systemctl_query(verb: str, unit: str) -> str:
    """``systemctl is-enabled|is-active UNIT``'s word ("enabled", "active", "disabled", ...); "" when no answer."""
    exe = shutil.which("systemctl")
    if exe is None:
        return ""
    try:
        res = subp.run([exe, verb, unit], SYSTEMCTL_TIMEOUT_S, subp.without_notify())
    except subp.CommandError:
        return ""  # no answer is an answer here: the caller falls back to the single-unit layout
    words = res.stdout.split()
    return words[0] if words else ""


def detect(host: Host, requested: str = "auto", query: Optional[UnitQuery] = None) -> Layout:
    """The layout ``run`` should use. ``requested`` is ``run --layout``; "auto" asks systemd about the serve unit."""
    if requested == SPLIT:
        return Layout(SPLIT, "--layout split")
    if requested == SINGLE:
        return Layout(SINGLE, "--layout single")
    if not host.is_real:
        return Layout(SINGLE, "--root: no service manager to ask")
    if not host.exists("/run/systemd/system"):
        return Layout(SINGLE, "systemd is not the service manager here")
    ask = query or systemctl_query
    enabled = ask("is-enabled", SERVE_UNIT)
    if enabled in ("enabled", "enabled-runtime"):
        return Layout(SPLIT, f"{SERVE_UNIT} is {enabled}")
    active = ask("is-active", SERVE_UNIT)
    if active in ("active", "activating", "reloading"):
        return Layout(SPLIT, f"{SERVE_UNIT} is {active}")
    return Layout(SINGLE, f"{SERVE_UNIT} is {enabled or 'not installed'}")
