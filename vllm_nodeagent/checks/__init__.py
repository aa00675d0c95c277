"""Readiness checks: is this GPU node ready to serve, beyond the settings the agent manages (issue 16).

One module per area; each exposes ``checks(probe) -> list[CheckResult]`` and is read-only. ``run_all`` runs every
area behind its own failure boundary: a host fault in one area is one WARN line naming it, never a traceback,
and the other areas still report. Modules are imported lazily so doctor pays only for what it runs.
"""

from __future__ import annotations

import importlib
from typing import Callable

from vllm_nodeagent.checks.base import CheckResult, Probe
from vllm_nodeagent.checks.status import Status

# Area modules in the order doctor shows them.
AREAS = ("shm", "limits", "kernel", "storage", "gpu", "link", "xid", "stack", "fabric", "p2p", "metrics")


def run_all(probe: Probe, areas: tuple[str, ...] = AREAS) -> list[CheckResult]:
    results: list[CheckResult] = []
    for area in areas:
        try:
            fn: Callable[[Probe], list[CheckResult]] = importlib.import_module(f"{__name__}.{area}").checks
            results.extend(fn(probe))
        except (OSError, ValueError, LookupError, ArithmeticError) as exc:  # a host fault, reported, not raised
            results.append(
                CheckResult(
                    area,
                    Status.WARN,
                    None,
                    None,
                    f"report this: the {area} checks failed",
                    f"{type(exc).__name__}: {exc}",
                )
            )
    return results


__all__ = ["AREAS", "CheckResult", "Probe", "Status", "run_all"]
