"""Check 8: the open-file and locked-memory limits vLLM runs with.

A systemd service ignores /etc/security/limits.conf: its limits come from LimitNOFILE=/LimitMEMLOCK= in the
unit (and drop-ins) or systemd's defaults (soft 1024 open files, 8 MiB memlock). vLLM raises its own soft
open-file limit up to the hard one, so the hard limit is what counts; NCCL over RDMA pins memory and needs
an unlimited memlock. Both the unit file and the live vLLM process's /proc/<pid>/limits are read.
"""

from __future__ import annotations

import os
import re
from typing import Optional

from vllm_nodeagent.checks.base import CheckResult, Probe, Registered
from vllm_nodeagent.checks.status import Status
from vllm_nodeagent.host.parse import ini_assignments

UNITS = ("vllm-nodeagent-serve.service", "vllm-nodeagent.service")  # the serving unit when split, else the one
UNIT_DIRS = (
    "/etc/systemd/system",
    "/run/systemd/system",
    "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
)  # systemd's search order: first wins
NOFILE_MIN = 65536
INFINITY = -1
_SUFFIX = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_LIMIT_LINE = re.compile(r"^(Max [a-z ]+?)\s{2,}(\S+)\s+(\S+)")


def parse_limit_value(text: str) -> Optional[int]:
    """A systemd/procfs limit value: a number (K/M/G/T suffixes, 1024-based), or infinity/unlimited = -1."""
    t = text.strip()
    if t in ("infinity", "unlimited"):
        return INFINITY
    mult = _SUFFIX.get(t[-1:].upper(), 1) if t else 1
    digits = t[:-1] if mult != 1 else t
    return int(digits) * mult if digits.isdigit() else None


def parse_unit_limit(value: str) -> Optional[tuple[int, int]]:
    """LimitX= value "N" or "soft:hard" -> (soft, hard)."""
    soft, _, hard = value.partition(":")
    s, h = parse_limit_value(soft), parse_limit_value(hard or soft)
    return (s, h) if s is not None and h is not None else None


def parse_unit_limits(texts: list[str]) -> dict[str, str]:
    """The effective Limit*= assignments of a unit and its drop-ins (given in load order; last wins)."""
    return {key: val for key, val in ini_assignments(texts, "Service") if key.startswith("Limit")}


def parse_proc_limits(text: str) -> dict[str, tuple[int, int]]:
    """/proc/<pid>/limits -> {"Max open files": (soft, hard), ...} (unlimited = -1)."""
    out: dict[str, tuple[int, int]] = {}
    for line in text.splitlines():
        m = _LIMIT_LINE.match(line)
        if m:
            s, h = parse_limit_value(m.group(2)), parse_limit_value(m.group(3))
            if s is not None and h is not None:
                out[m.group(1)] = (s, h)
    return out


def _show(v: int) -> str:
    return "infinity" if v == INFINITY else str(v)


def _at_least(v: int, floor: int) -> bool:
    return v == INFINITY or v >= floor


def judge(nofile: Optional[tuple[int, int]], memlock: Optional[tuple[int, int]]) -> tuple[Status, str, str]:
    """(status, current, detail) for a pair of (soft, hard) limits; None = systemd's default applies."""
    nof = nofile or (1024, 524288)
    mem = memlock or (8 << 20, 8 << 20)
    current = f"nofile {_show(nof[0])}:{_show(nof[1])}, memlock {_show(mem[0])}:{_show(mem[1])}"
    problems = []
    if not _at_least(nof[1], NOFILE_MIN):
        problems.append(f"hard open-file limit {_show(nof[1])} < {NOFILE_MIN}")
    if mem[0] != INFINITY:
        problems.append("memlock is not unlimited (NCCL over RDMA registers pinned memory)")
    return (Status.WARN if problems else Status.PASS), current, "; ".join(problems)


def find_unit(probe: Probe) -> Optional[tuple[str, list[str]]]:
    """(unit path, texts of the unit and its drop-ins in load order) of the first installed unit in UNITS."""
    for unit in UNITS:
        path = next((f"{d}/{unit}" for d in UNIT_DIRS if probe.host.exists(f"{d}/{unit}")), None)
        if path is None:
            continue
        dropins: dict[str, str] = {}
        for d in reversed(UNIT_DIRS):  # /etc wins over /run over /usr/lib for a drop-in of the same name
            for p in probe.host.glob(f"{d}/{unit}.d", "*.conf"):
                dropins[os.path.basename(p)] = p
        texts = [probe.host.read_or(path, "") or ""] + [
            probe.host.read_or(dropins[n], "") or "" for n in sorted(dropins)
        ]
        return path, texts
    return None


WANT = f"hard nofile >= {NOFILE_MIN}, memlock infinity"
HINT = "systemctl edit UNIT: [Service] LimitNOFILE=1048576 and LimitMEMLOCK=infinity (limits.conf does not apply)"


def unit_check(probe: Probe) -> CheckResult:
    found = find_unit(probe)
    if found is None:
        return CheckResult(
            "limits.unit", Status.SKIP, "no unit file", WANT, "", "vllm-nodeagent is not installed as a unit"
        )
    path, texts = found
    limits = parse_unit_limits(texts)
    nofile = parse_unit_limit(limits["LimitNOFILE"]) if "LimitNOFILE" in limits else None
    memlock = parse_unit_limit(limits["LimitMEMLOCK"]) if "LimitMEMLOCK" in limits else None
    status, current, detail = judge(nofile, memlock)
    unit = os.path.basename(path)
    return CheckResult(
        "limits.unit",
        status,
        current,
        WANT,
        HINT.replace("UNIT", unit) if status != Status.PASS else "",
        f"{path}: {detail}" if detail else path,
    )


def process_check(probe: Probe) -> CheckResult:
    pid = probe.vllm_pid()
    if pid is None:
        return CheckResult("limits.vllm", Status.SKIP, None, WANT, "", "vLLM is not running (no live pid file)")
    text = probe.host.read_or(f"/proc/{pid}/limits")
    if text is None:
        return CheckResult("limits.vllm", Status.SKIP, f"pid {pid}", WANT, "", f"/proc/{pid}/limits unreadable")
    parsed = parse_proc_limits(text)
    status, current, detail = judge(parsed.get("Max open files"), parsed.get("Max locked memory"))
    return CheckResult(
        "limits.vllm",
        status,
        f"pid {pid}: {current}",
        WANT,
        HINT.replace("UNIT", UNITS[-1]) if status != Status.PASS else "",
        detail,
    )


def checks(probe: Probe) -> list[CheckResult]:
    return [unit_check(probe), process_check(probe)]


CHECKS = Registered(("limits.unit", "limits.vllm"), checks)
