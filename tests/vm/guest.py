"""Reading and waiting on a guest's state (the host settings the agent manages, the unit, the stand-in)."""

from __future__ import annotations

import json
import re
import time
from typing import Any, Callable, Optional, TypeVar

from vm import VM

SYSCTLS = (
    "vm.max_map_count",
    "net.core.rmem_max",
    "net.core.wmem_max",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
)
UNIT = "vllm-nodeagent"
DATA_DISK = "vdb"
STANDIN_REMOTE = "/opt/standin/standin_vllm.py"
HOLD_FILE = "/etc/standin-hold"

T = TypeVar("T")

_STATE_SCRIPT = r"""
set -u
for k in {sysctls}; do printf 'sysctl %s %s\n' "$k" "$(sysctl -n "$k" | tr -s '\t ' '  ')"; done
printf 'thp.enabled %s\n' "$(cat /sys/kernel/mm/transparent_hugepage/enabled)"
printf 'thp.defrag %s\n' "$(cat /sys/kernel/mm/transparent_hugepage/defrag)"
printf 'block.scheduler %s\n' "$(cat /sys/block/{disk}/queue/scheduler)"
printf 'irqbalance.active %s\n' "$(systemctl is-active irqbalance || true)"
printf 'irqbalance.enabled %s\n' "$(systemctl is-enabled irqbalance || true)"
"""


def selected(bracket_list: str) -> str:
    """'always [madvise] never' -> 'madvise'."""
    m = re.search(r"\[([^\]]+)\]", bracket_list)
    return m.group(1) if m else bracket_list.strip()


def host_state(guest: VM) -> dict[str, str]:
    """The values the agent may change, as the guest's kernel and systemd report them."""
    script = _STATE_SCRIPT.replace("{sysctls}", " ".join(SYSCTLS)).replace("{disk}", DATA_DISK)
    out: dict[str, str] = {}
    for line in guest.out(script).splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "sysctl":
            key, _, value = rest.partition(" ")
            out[key] = " ".join(value.split())
        elif kind in ("thp.enabled", "thp.defrag", "block.scheduler"):
            out[kind] = selected(rest)
        else:
            out[kind] = rest.strip()
    return out


def diag(guest: VM, lines: int = 60) -> str:
    """The agent's recent journal and unit state, for assertion messages."""
    res = guest.ssh(
        f"systemctl status --no-pager -l {UNIT} | head -n 15; echo ---; "
        f"journalctl -u {UNIT} -o cat --no-pager -n {lines}",
        check=False,
        timeout=60,
    )
    return "\n--- guest diagnostics ---\n" + res.stdout + res.stderr


def _fields(value: str) -> Optional[list[int]]:
    try:
        return [int(f) for f in value.split()]
    except ValueError:
        return None


def compliant(key: str, current: Optional[str], desired: str) -> bool:
    """The agent's rule: numeric sysctls are floors, field by field; everything else is exact."""
    if current is None:
        return False
    if key.startswith(("vm.", "net.")):
        cur, want = _fields(current), _fields(desired)
        if cur is not None and want is not None and len(cur) == len(want):
            return all(c >= w for c, w in zip(cur, want))
    return current == desired


def off_target(state: dict[str, str], desired: dict[str, str], floors: bool = True) -> dict[str, tuple[str, str]]:
    """Settings not at their target: {key: (current, desired)}. ``floors=False``: exact comparison."""
    return {
        k: (state.get(k, "?"), v)
        for k, v in desired.items()
        if not (compliant(k, state.get(k), v) if floors else state.get(k) == v)
    }


def unit_props(guest: VM, *props: str) -> dict[str, str]:
    text = guest.out(["systemctl", "show", UNIT, *(f"--property={p}" for p in props)])
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def wait_for(
    what: str,
    probe: Callable[[], Optional[T]],
    timeout: float,
    interval: float = 2.0,
    explain: Optional[Callable[[], str]] = None,
) -> T:
    """Poll ``probe`` until it returns something other than None/False; fail with ``what`` after ``timeout``
    (and what ``explain`` returns then)."""
    deadline = time.monotonic() + timeout
    while True:
        last = probe()
        if last is not None and last is not False:
            return last
        if time.monotonic() > deadline:
            extra = explain() if explain is not None else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{extra}")
        time.sleep(interval)


def http_get(guest: VM, url: str) -> tuple[int, str]:
    """GET ``url`` from inside the guest: (status, body); status 0 = no connection."""
    script = (
        "import sys, urllib.request, urllib.error\n"
        "try:\n"
        "    r = urllib.request.urlopen(sys.argv[1], timeout=10)\n"
        "    print(r.status); print(r.read().decode())\n"
        "except urllib.error.HTTPError as e:\n"
        "    print(e.code); print(e.read().decode())\n"
        "except OSError as e:\n"
        "    print(0); print(e)\n"
    )
    out = guest.ssh(["python3", "-c", script, url]).stdout
    code, _, body = out.partition("\n")
    return int(code.strip()), body.strip()


def standin_pid(guest: VM) -> Optional[int]:
    res = guest.ssh(["pgrep", "-f", "-o", STANDIN_REMOTE], check=False)
    text = res.stdout.strip()
    return int(text) if res.returncode == 0 and text else None


def proc_status(guest: VM, pid: int) -> dict[str, str]:
    text = guest.out(["cat", f"/proc/{pid}/status"])
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def numa_policies(guest: VM, pid: int) -> set[str]:
    """The memory policies /proc/PID/numa_maps shows (second field of each mapping)."""
    text = guest.out(["cat", f"/proc/{pid}/numa_maps"])
    return {line.split()[1] for line in text.splitlines() if len(line.split()) > 1}


def journal_cursor(guest: VM) -> str:
    out = guest.out(["journalctl", "-n", "0", "--show-cursor", "--quiet"])
    return out.rsplit("cursor:", 1)[-1].strip()


def journal_since(guest: VM, cursor: str) -> str:
    """The unit's journal messages after ``cursor``, one per line.

    Filtered here rather than with ``-u``: bookworm's journalctl skips the first matching entry when
    ``--after-cursor`` is combined with a match whose cursor entry does not match.
    """
    out = guest.ssh(["journalctl", "-o", "json", "--no-pager", f"--after-cursor={cursor}"], check=False).stdout
    lines: list[str] = []
    unit = f"{UNIT}.service"
    for raw in out.splitlines():
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        if unit not in (entry.get("_SYSTEMD_UNIT"), entry.get("UNIT"), entry.get("OBJECT_SYSTEMD_UNIT")):
            continue
        msg = entry.get("MESSAGE", "")
        if isinstance(msg, list):
            msg = bytes(msg).decode(errors="replace")
        lines.append(str(msg))
    return "\n".join(lines) + "\n"


def doctor_json(guest: VM) -> tuple[int, Any]:
    res = guest.ssh(["vllm-nodeagent", "doctor", "--json"], check=False)
    return res.returncode, json.loads(res.stdout)


def find_status(obj: Any, value: str) -> list[Any]:
    """Every dict anywhere in ``obj`` whose "status" is ``value``."""
    found: list[Any] = []
    if isinstance(obj, dict):
        if obj.get("status") == value:
            found.append(obj)
        for v in obj.values():
            found.extend(find_status(v, value))
    elif isinstance(obj, list):
        for v in obj:
            found.extend(find_status(v, value))
    return found
