"""What a check can say: the one status of every doctor check, its JSON, the textfile metrics, `doctor --strict`
and `doctor --slurm`.

The values are the JSON contract's (``"pass"`` … ``"skip"``, docs/json.md): a ``Status`` is a ``str`` equal to, and
hashing as, its value, and prints as it (``f"{Status.PASS}"`` is ``pass`` on every supported Python). No other
module spells a status as a string literal (tests/test_layout_rules.py). The settings engine's outcomes
(``ok``, ``changed``, ``drifted``, …: what apply and revert did) are another thing, translated to a ``Status`` in
one place, beside the settings (settings/checks.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum


class Status(str, Enum):
    """In report order; each has its textfile value (``vllm_nodeagent_check_status``) and its colour."""

    PASS = "pass"  # noqa: S105 - a check status, not a password
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"

    def __str__(self) -> str:
        return str(self.value)

    def __hash__(self) -> int:  # as its value: a dict keyed by Status answers for "pass" too
        return hash(self.value)

    @property
    def metric(self) -> int:
        """The textfile metric value: 0 pass, 1 warn, 2 fail, -1 skip (docs/metrics.md)."""
        return _METRIC[self]


_METRIC = {Status.PASS: 0, Status.WARN: 1, Status.FAIL: 2, Status.SKIP: -1}


def worst(statuses: Iterable[Status]) -> Status:
    """The status a group of results rolls up to: fail > warn > pass > skip (nothing at all: skip)."""
    seen = set(statuses)
    for s in (Status.FAIL, Status.WARN, Status.PASS):
        if s in seen:
            return s
    return Status.SKIP


__all__ = ["Status", "worst"]
