"""Readiness checks: is this GPU node ready to serve, beyond the settings the agent manages (issue 16).

One module per area; each exposes ``checks(probe) -> list[CheckResult]`` and is read-only. ``run_all`` runs every
area behind its own failure boundary: a host fault in one area is one WARN line naming it, never a traceback,
and the other areas still report. Modules are imported lazily so doctor pays only for what it runs.
"""

from __future__ import annotations

import importlib
from typing import Callable

from vllm_nodeagent.checks.base import FAIL, PASS, SKIP, STATUSES, WARN, CheckResult, Probe

# Area modules in the order doctor shows them.
AREAS = ("shm", "limits", "kernel", "storage", "gpu", "link", "xid", "stack", "fabric", "p2p", "metrics")

# The textfile metric value of each status (vllm_nodeagent_check_status).
STATUS_VALUE = {PASS: 0, WARN: 1, FAIL: 2, SKIP: -1}


def run_all(probe: Probe, areas: tuple[str, ...] = AREAS) -> list[CheckResult]:
    results: list[CheckResult] = []
    for area in areas:
        try:
            fn: Callable[[Probe], list[CheckResult]] = importlib.import_module(f"{__name__}.{area}").checks
            results.extend(fn(probe))
        except (OSError, ValueError, LookupError, ArithmeticError) as exc:  # a host fault, reported, not raised
            results.append(
                CheckResult(
                    area, WARN, None, None, f"report this: the {area} checks failed", f"{type(exc).__name__}: {exc}"
                )
            )
    return results


__all__ = ["AREAS", "FAIL", "PASS", "SKIP", "STATUSES", "STATUS_VALUE", "WARN", "CheckResult", "Probe", "run_all"]
