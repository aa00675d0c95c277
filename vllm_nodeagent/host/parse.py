"""Pure parsers for the text formats the kernel and NVML hand us. No I/O here."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import NamedTuple, Optional


class ParseError(ValueError):
    """Text that does not have the format the kernel documents."""


# Some kernels print binary sysfs attributes with their buffer's NUL terminator ("0-3\n\0" on arm64 5.15-rc):
# trailing NULs are padding, not content.
_PADDING = " \t\r\n\x00"


def clean_attr(text: str) -> str:
    """A sysfs/procfs value without surrounding whitespace and NUL padding."""
    return text.strip(_PADDING)


def parse_cpulist(text: str) -> list[int]:
    """Parse a kernel cpulist ("0-3,8-11", "0-31:2/4" groups, "" = none) into sorted unique ints.

    Format: Documentation/admin-guide/cputopology.rst and bitmap_parselist() in lib/bitmap.c.
    """
    cpus: set[int] = set()
    text = clean_attr(text)
    if not text:
        return []
    for chunk in text.split(","):
        chunk = chunk.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+)(?::(\d+)/(\d+))?)?", chunk)
        if not m:
            raise ParseError(f"bad cpulist element {chunk!r} in {text!r}")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise ParseError(f"bad cpulist range {chunk!r} in {text!r}")
        used = int(m.group(3)) if m.group(3) else 1
        group = int(m.group(4)) if m.group(4) else used
        if used < 1 or group < used:
            raise ParseError(f"bad cpulist stride {chunk!r} in {text!r}")
        for start in range(lo, hi + 1, group):
            cpus.update(c for c in range(start, min(start + used, hi + 1)))
    return sorted(cpus)


def format_cpulist(cpus: Iterable[int]) -> str:
    """The canonical kernel form of a set of CPUs: "0-3,8-11"."""
    ordered = sorted(set(cpus))
    ranges: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        ranges.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(ranges)


def parse_passwd(text: str) -> list[tuple[str, int, int, str]]:
    """(name, uid, gid, home) of each well-formed /etc/passwd line (passwd(5)); NIS "+"/"-" lines and damaged ones
    are skipped, never guessed at."""
    out: list[tuple[str, int, int, str]] = []
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) != 7 or not fields[0] or fields[0][0] in "+-#":
            continue
        if not fields[2].isdigit() or not fields[3].isdigit():
            continue
        out.append((fields[0], int(fields[2]), int(fields[3]), fields[5]))
    return out


def parse_group(text: str) -> list[tuple[str, int, list[str]]]:
    """(name, gid, member names) of each well-formed /etc/group line (group(5))."""
    out: list[tuple[str, int, list[str]]] = []
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) != 4 or not fields[0] or fields[0][0] in "+-#" or not fields[2].isdigit():
            continue
        out.append((fields[0], int(fields[2]), [m for m in fields[3].split(",") if m]))
    return out


def parse_proc_locks(text: str) -> list[tuple[str, int, tuple[int, int, int]]]:
    """(kind, pid, (major, minor, inode)) of each lock in /proc/locks ("1: FLOCK  ADVISORY  WRITE 42
    08:01:1234 0 EOF"; the device is hex, the inode decimal: fs/locks.c lock_get_status). Blocked waiters
    ("1: -> FLOCK ...") are not holders and are skipped."""
    out: list[tuple[str, int, tuple[int, int, int]]] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 6 or fields[1] == "->":
            continue
        dev = fields[5].split(":")
        try:
            out.append((fields[1], int(fields[4]), (int(dev[0], 16), int(dev[1], 16), int(dev[2]))))
        except (ValueError, IndexError):
            continue
    return out


def parse_cpumask(text: str) -> list[int]:
    """Parse a hex cpumask as sysfs prints it ("ffff,00000000" = 32-bit words, most significant first)."""
    words = clean_attr(text).split(",")
    if not words or any(not re.fullmatch(r"[0-9a-fA-F]+", w) for w in words):
        raise ParseError(f"bad cpumask {text!r}")
    value = int("".join(w.rjust(8, "0") for w in words), 16)
    return [bit for bit in range(value.bit_length()) if value >> bit & 1]


def parse_bracket_list(text: str) -> tuple[Optional[str], list[str]]:
    """Parse "none [mq-deadline] kyber" into (current, offered). THP and the block scheduler use this form."""
    current: Optional[str] = None
    offered: list[str] = []
    for token in text.split():
        if token.startswith("[") and token.endswith("]") and len(token) > 2:
            name = token[1:-1]
            if current is not None:
                raise ParseError(f"two bracketed entries in {text!r}")
            current = name
        else:
            name = token
        if not re.fullmatch(r"[A-Za-z0-9_+\-.]+", name):
            raise ParseError(f"bad entry {token!r} in {text!r}")
        offered.append(name)
    return current, offered


def parse_meminfo(text: str) -> dict[str, int]:
    """Parse /proc/meminfo or a node's meminfo into bytes per key.

    Node files prefix each line with "Node N "; both forms are accepted. Values are in kB (KiB, really).
    """
    out: dict[str, int] = {}
    for line in text.splitlines():
        line = re.sub(r"^Node \d+ ", "", clean_attr(line))
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9_()]+):\s+(\d+)(?:\s+kB)?", line)
        if not m:
            raise ParseError(f"bad meminfo line {line!r}")
        value = int(m.group(2))
        out[m.group(1)] = value * 1024 if line.endswith("kB") else value
    return out


def parse_sysctl_vector(text: str) -> list[int]:
    """Parse a sysctl value of whitespace-separated integers ("4096 131072 6291456")."""
    fields = text.split()
    if not fields:
        raise ParseError(f"empty sysctl value {text!r}")
    # ASCII digits only: int() would also take "١٢", "1_000" and "+5", which the kernel refuses.
    if not all(_SYSCTL_INT.fullmatch(f) for f in fields):
        raise ParseError(f"non-integer sysctl value {text!r}")
    return [int(f) for f in fields]


_SYSCTL_INT = re.compile(r"-?[0-9]{1,20}")


_PCI_RE = re.compile(r"([0-9a-fA-F]{1,8}):([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])")


def normalize_pci_bus_id(bus_id: str) -> str:
    """NVML writes "00000000:17:00.0"; sysfs writes "0000:17:00.0". Return the sysfs form, lower case."""
    m = _PCI_RE.fullmatch(bus_id.strip())
    if not m:
        raise ParseError(f"bad PCI bus id {bus_id!r}")
    domain, bus, dev, fn = m.groups()
    return f"{int(domain, 16):04x}:{bus.lower()}:{dev.lower()}.{fn}"


def parse_interrupts_for(text: str, names: Iterable[str]) -> list[int]:
    """IRQ numbers from /proc/interrupts whose action column mentions any of ``names``.

    Used when a device has no msi_irqs directory (legacy INTx): the action names carry the driver or bus id.
    """
    wanted = [n for n in names if n]
    irqs: list[int] = []
    for line in text.splitlines()[1:]:
        head, _, rest = line.partition(":")
        if not head.strip().isdigit():
            continue
        if any(re.search(rf"(?<![0-9A-Za-z_]){re.escape(n)}(?![0-9A-Za-z_])", rest) for n in wanted):
            irqs.append(int(head))
    return sorted(irqs)


def status_field(text: str, key: str) -> Optional[str]:
    """The value of ``key`` in /proc/<pid>/status ("Cpus_allowed_list:\t0-5"), or None when absent."""
    return parse_status(text).get(key)


def parse_nvidia_numa_status(text: str) -> tuple[int, str]:
    """(node, status) from /proc/driver/nvidia/gpus/<bus>/numa_status ("Node:      2\nStatus:    online\n...").

    The driver (nv-procfs.c) prints "Node: %d" (-1 = NUMA_NO_NODE) and "Status: %s" (disabled, offline,
    online_in_progress, online, ...); Address/Size follow only once the GPU is initialised.
    """
    node: Optional[int] = None
    status = ""
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if not sep:
            continue
        if name.strip() == "Node":
            try:
                node = int(clean_attr(value))
            except ValueError:
                raise ParseError(f"bad Node line {line!r}") from None
        elif name.strip() == "Status":
            status = clean_attr(value)
    if node is None:
        raise ParseError(f"no Node line in {clean_attr(text)!r}")
    return node, status


def ini_assignments(texts: Iterable[str], section: str) -> list[tuple[str, str]]:
    """``key = value`` pairs of ``[section]`` in systemd-style files (a unit and its drop-ins, logind.conf and
    its drop-ins), given in load order: later pairs override earlier ones. Comments (# ;) and blank lines skipped."""
    out: list[tuple[str, str]] = []
    for text in texts:
        current = ""
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("["):
                current = line.strip("[]").strip()
                continue
            key, sep, val = line.partition("=")
            if sep and current == section:
                out.append((key.strip(), val.strip()))
    return out


class StatFields(NamedTuple):
    comm: str
    state: str
    ppid: int
    pgid: int
    sid: int
    start_time: int  # clock ticks after boot (field 22)


def parse_proc_stat(text: str) -> StatFields:
    """/proc/<pid>/stat (proc(5)): "pid (comm) state ppid pgrp session ... starttime ...". The comm may hold
    spaces and parentheses: it ends at the *last* ")". Fields after ppid that a recorded fixture left out are 0."""
    head, sep, rest = text.rpartition(")")
    if not sep or "(" not in head:
        raise ParseError(f"no (comm) in stat {text[:80]!r}")
    f = rest.split()
    nums = [f[i] if i < len(f) else "0" for i in (1, 2, 3, 19)]
    if len(f) < 2 or not all(_SYSCTL_INT.fullmatch(x) for x in nums):
        raise ParseError(f"bad stat line {text[:80]!r}")
    return StatFields(head.split("(", 1)[1], f[0], *(int(x) for x in nums))


def parse_status(text: str) -> dict[str, str]:
    """/proc/<pid>/status ("Name:\\tpython3", "Cpus_allowed_list:\\t0-5", ...) as key -> value (stripped)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep:
            out.setdefault(name.strip(), clean_attr(value))
    return out


def json_depth(text: str) -> int:
    """The deepest nesting of [ and { in JSON text, strings skipped: checked before ``json.loads``, whose
    recursion a deeply nested list (100,000 "[") would exhaust."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


# C0 controls (newline, tab, ESC), DEL, C1, Unicode line separators: they split a copied command line or a log line.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def control_characters(key: str, value: object) -> list[tuple[str, str, str]]:
    """(key, value, why) for each string of a config value (a string, a list's elements as ``key[i]``, a table's
    values as ``key.name``) that holds a control character."""
    if isinstance(value, str):
        items = [(key, value)]
    elif isinstance(value, (list, tuple)):
        items = [(f"{key}[{i}]", v) for i, v in enumerate(value) if isinstance(v, str)]
    elif isinstance(value, dict):
        items = [(f"{key}.{k}", v) for k, v in value.items() if isinstance(v, str)]
    else:
        return []
    out = []
    for sub, text in items:
        m = _CONTROL.search(text)
        if m:
            out.append((sub, text, f"control character {m.group()!r} at position {m.start()}: not allowed"))
    return out
