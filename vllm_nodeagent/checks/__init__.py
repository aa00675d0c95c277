"""Doctor's checks: the status (``status.Status``), what every check receives (``base.Probe``), the one registry
(``registry.REGISTRY``, in report order) and the host and readiness rooms (issue 16: is this GPU node ready to
serve, beyond the settings the agent manages), one module per area, each registering its ``CHECKS``.

``run_all`` runs the readiness areas (all, or those named) as the daemon's textfile does, each behind its own
failure boundary: a host fault in one area is one WARN line naming it, never a traceback.
"""

from __future__ import annotations

from vllm_nodeagent.checks import registry
from vllm_nodeagent.checks.base import CheckResult, Probe
from vllm_nodeagent.checks.registry import AREAS
from vllm_nodeagent.checks.status import Status


def run_all(probe: Probe, areas: tuple[str, ...] = AREAS) -> list[CheckResult]:
    unknown = [a for a in areas if a not in AREAS]
    if unknown:
        raise ValueError(f"no readiness area {', '.join(unknown)} (known: {', '.join(AREAS)})")
    return registry.run(probe, names=areas)


__all__ = ["AREAS", "CheckResult", "Probe", "Status", "run_all"]
