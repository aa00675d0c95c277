"""doctor's report: every registered check (checks/registry.py: the host facts, every configured setting, the vLLM
launch and the readiness checks, each registered in its own room), run in the registry's order, as one list of
``CheckResult`` (printed by commands/doctor.py). Never changes a setting."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Optional

from vllm_nodeagent.checks import registry
from vllm_nodeagent.checks.base import CheckResult, Probe
from vllm_nodeagent.checks.status import Status
from vllm_nodeagent.context import EXIT_FAILED, EXIT_OK
from vllm_nodeagent.topology import discover

if TYPE_CHECKING:
    from vllm_nodeagent.context import Context


def matches(check_id: str, only: Sequence[str]) -> bool:
    """``--only`` takes ids or dotted prefixes (``sysctl`` selects every sysctl)."""
    return any(check_id == o or check_id.startswith(o.rstrip(".") + ".") for o in only)


def run_checks(ctx: Context, only: Optional[Sequence[str]] = None) -> list[CheckResult]:
    """The report; with ``only``, the checks it selects (only the registered checks that can answer to it run)."""
    nvml, why = ctx.open_nvml()
    try:
        topo = discover(ctx.host, nvml, why)
        checks = registry.run(Probe(ctx.host, ctx.config, topo, nvml, nvml_why=why, ctx=ctx), only)
    finally:
        if nvml is not None:
            nvml.close()
    return [c for c in checks if matches(c.id, only)] if only else checks


def summary(checks: list[CheckResult]) -> dict[str, int]:
    return {s.value: sum(1 for c in checks if c.status == s) for s in Status}


def exit_code(checks: list[CheckResult], strict: bool) -> int:
    counts = summary(checks)
    return EXIT_FAILED if counts[Status.FAIL] or (strict and counts[Status.WARN]) else EXIT_OK
