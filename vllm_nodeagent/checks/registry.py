"""Doctor's one registry of checks, in the order the report shows them.

Each check lives in the room of what it checks and registers there (a ``base.Registered``: the ids its results
carry, and the read-only function that makes them from a ``Probe``): the host facts in checks/host.py, the settings
in settings/checks.py, the serving checks in serving/checks.py, the readiness areas in checks/<area>.py. This table
only names them and orders them; doctor runs it (doctor.py), ``doctor --only`` selects from it, and the daemon's
textfile runs its readiness part (``AREAS``). A room is imported when it runs, so doctor pays only for what it runs.

The readiness areas run behind their own failure boundary: a host fault in one is one WARN line named by the area,
never a traceback, and the other areas still report.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Optional

from vllm_nodeagent.checks.base import CheckResult, Probe, Registered
from vllm_nodeagent.checks.status import Status

# The readiness areas (issue 16), each checks/<area>.py.
AREAS = ("shm", "limits", "kernel", "storage", "gpu", "link", "xid", "stack", "fabric", "p2p", "metrics")

# (name, "module:attribute" of its Registered), in report order. A new check: its function and ids in its room,
# and one line here.
REGISTRY: tuple[tuple[str, str], ...] = (
    ("host", "vllm_nodeagent.checks.host:CHECKS"),
    ("agent.layout", "vllm_nodeagent.serving.checks:LAYOUT"),
    ("settings", "vllm_nodeagent.settings.checks:CHECKS"),
    ("vllm", "vllm_nodeagent.serving.checks:VLLM"),
    ("vllm.compile_cache", "vllm_nodeagent.serving.compile_keep:CHECKS"),
    *((area, f"vllm_nodeagent.checks.{area}:CHECKS") for area in AREAS),
)


def entry(where: str) -> Registered:
    module, _, attr = where.partition(":")
    found = getattr(importlib.import_module(module), attr)
    if not isinstance(found, Registered):
        raise TypeError(f"{where} is not a Registered check")
    return found


def known_ids() -> list[str]:
    """Every id ``--only`` can name, in report order: the registered ids and families (``sysctl.*``)."""
    ids: list[str] = []
    for _, where in REGISTRY:
        ids += [i for i in entry(where).ids if i not in ids]
    return ids


def unknown(only: Sequence[str]) -> list[str]:
    """The ``--only`` values no registered check can answer to."""
    entries = [entry(where) for _, where in REGISTRY]
    return [o for o in only if not any(e.selected_by(o) for e in entries)]


def run(probe: Probe, only: Optional[Sequence[str]] = None, names: Optional[Sequence[str]] = None) -> list[CheckResult]:
    """The results of every registered check (``names``: only those entries), in registry order; with ``only``,
    only the entries one of its ids selects run (the caller keeps the matching results)."""
    results: list[CheckResult] = []
    for name, where in REGISTRY:
        if names is not None and name not in names:
            continue
        try:
            reg = entry(where)
        except ImportError as exc:  # keep doctor usable when a room cannot load; say which
            results.append(CheckResult(name, Status.SKIP, None, None, "", f"{name} checks unavailable: {exc}"))
            continue
        if only and not any(reg.selected_by(o) for o in only):
            continue
        if name not in AREAS:
            results.extend(reg.run(probe))
            continue
        try:
            results.extend(reg.run(probe))
        except (OSError, ValueError, LookupError, ArithmeticError) as exc:  # a host fault, reported, not raised
            results.append(
                CheckResult(
                    name,
                    Status.WARN,
                    None,
                    None,
                    f"report this: the {name} checks failed",
                    f"{type(exc).__name__}: {exc}",
                )
            )
    return results


__all__ = ["AREAS", "REGISTRY", "entry", "known_ids", "run", "unknown"]
