"""Check 5: Xid (GPU) and SXid (NVSwitch) events in the kernel log since boot.

Read from /dev/kmsg (non-blocking, through the host seam): its ring buffer holds the log since boot unless it
wrapped; where /dev/kmsg is hidden (the daemon's sandbox) ``journalctl -k -b`` through the one subprocess helper,
with a timeout. Severity follows the "Resolution Bucket (Immediate Action)" column of NVIDIA's Xid
catalog (https://docs.nvidia.com/deploy/xid-errors/analyzing-xid-catalog.html): codes whose action is to
restart the application are the application's own faults (a bad kernel, an out-of-bounds access) and only
warn; codes that call for a GPU reset, a reboot or support fail; codes not in the table warn with a pointer.
SXids carry "Fatal"/"Non-fatal" in their text.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from typing import Optional

from vllm_nodeagent.checks.base import CheckResult, Probe, Registered
from vllm_nodeagent.checks.status import Status
from vllm_nodeagent.host import paths

KMSG = "/dev/kmsg"
JOURNAL_TIMEOUT_S = 5.0
MAX_BYTES = 16 << 20  # the largest kernel ring buffer is far smaller; a runaway fake file stops here
# Xid code -> (severity, what it means, the catalog's immediate action)
XIDS: dict[int, tuple[Status, str]] = {
    13: (Status.WARN, "graphics engine exception (application fault)"),
    31: (Status.WARN, "GPU memory page fault (application fault)"),
    43: (Status.WARN, "GPU stopped processing (application fault)"),
    45: (Status.WARN, "preemptive cleanup after an earlier error"),
    63: (Status.WARN, "ECC page retirement / row remap recorded"),
    68: (Status.WARN, "video decoder exception"),
    92: (Status.WARN, "high single-bit ECC error rate"),
    94: (Status.WARN, "contained ECC error (the affected application was stopped)"),
    48: (Status.FAIL, "double-bit ECC error: reset the GPU"),
    64: (Status.FAIL, "row remapping failed: reset, then RMA if it recurs"),
    74: (Status.FAIL, "NVLink error: reset the GPU, check the link"),
    79: (Status.FAIL, "GPU has fallen off the bus: reboot, check power and seating"),
    95: (Status.FAIL, "uncontained ECC error: reset the GPU"),
    119: (Status.FAIL, "GSP RPC timeout: reset the GPU"),
    120: (Status.FAIL, "GSP error: reset the GPU"),
    121: (Status.FAIL, "C2C link error: reset the GPU"),
    140: (Status.FAIL, "unrecovered ECC error: reset the GPU"),
    149: (Status.FAIL, "NVLink/fabric error: reset the GPU"),
    154: (Status.FAIL, "the driver asks for a recovery action (see gpu.memory_health)"),
}
_XID = re.compile(r"NVRM: Xid \(PCI:([0-9A-Fa-f:.]+)\): (\d+)")
_SXID = re.compile(r"SXid \(PCI:([0-9A-Fa-f:.]+)\): (\d+), ([^,]*)")


def read_kmsg(probe: Probe) -> Optional[str]:
    """The kernel log records (one message per line); None when /dev/kmsg cannot be read (sandbox, no root)."""
    try:
        fd = paths.open_read(probe.host.path(KMSG), nonblock=True)
    except OSError:
        return None
    chunks: list[bytes] = []
    total = 0
    try:
        while total < MAX_BYTES:
            try:
                data = os.read(fd, 8192)  # /dev/kmsg: one record per read
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # records overwritten while reading: go on with the next
                    continue
                if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    break  # the end of the buffer
                return None
            if not data:
                break  # a regular file (a fake tree) ends
            chunks.append(data)
            total += len(data)
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8", "replace")


def read_journal(argv: list[str], timeout_s: float = JOURNAL_TIMEOUT_S) -> Optional[str]:
    """The kernel messages of this boot from the journal (``journalctl -k -b``); None when it cannot answer."""
    from vllm_nodeagent.host import subp

    try:
        result = subp.run(argv, timeout_s)
    except subp.CommandError:
        return None
    return result.stdout if result.returncode == 0 else None


def kernel_log(probe: Probe) -> tuple[Optional[str], str]:
    """(the kernel log since boot, where it came from): /dev/kmsg, else the journal on the real host (the
    daemon's sandbox hides /dev/kmsg: ProtectKernelLogs=yes)."""
    text = read_kmsg(probe)
    if text is not None:
        return text, KMSG
    exe = shutil.which("journalctl") if probe.host.is_real else None
    if exe is None:
        return None, ""
    return read_journal([exe, "-k", "-b", "-o", "cat", "--no-pager", "-q"]), "journalctl -k -b"


def parse_events(text: str) -> list[tuple[str, str, int, str]]:
    """(kind "Xid"|"SXid", PCI address, code, text) per event; /dev/kmsg's "prio,seq,usec,flags;" prefix dropped."""
    out: list[tuple[str, str, int, str]] = []
    for line in text.splitlines():
        msg = line.split(";", 1)[1] if ";" in line.split(" ", 1)[0] else line
        m = _XID.search(msg)
        if m:
            out.append(("Xid", m.group(1).lower(), int(m.group(2)), msg.strip()))
            continue
        m = _SXID.search(msg)
        if m:
            out.append(("SXid", m.group(1).lower(), int(m.group(2)), msg.strip()))
    return out


def severity(kind: str, code: int, text: str) -> tuple[Status, str]:
    if kind == "SXid":
        fatal = "non-fatal" not in text.lower() and "fatal" in text.lower()
        return (Status.FAIL if fatal else Status.WARN), (
            "fatal NVSwitch error: reset the fabric" if fatal else "non-fatal"
        )
    return XIDS.get(code, (Status.WARN, "not in the table: look it up in NVIDIA's Xid catalog"))


def checks(probe: Probe) -> list[CheckResult]:
    cid = "gpu.xid"
    want = "no Xid/SXid since boot"
    if not probe.topo.gpus:
        return []  # a host without GPUs has no GPU checks
    text, source = kernel_log(probe)
    if text is None:
        return [
            CheckResult(cid, Status.SKIP, None, want, "", f"{KMSG} and the journal unreadable (run doctor as root)")
        ]
    events = parse_events(text)
    if not events:
        return [CheckResult(cid, Status.PASS, "none", want, "", f"from {source}")]
    counts: dict[tuple[str, str, int], int] = {}
    for kind, pci, code, _ in events:
        counts[(kind, pci, code)] = counts.get((kind, pci, code), 0) + 1
    texts = {(k, p, c): t for k, p, c, t in events}
    statuses = []
    shown = []
    for key, n in counts.items():
        kind, pci, code = key
        status, what = severity(kind, code, texts[key])
        statuses.append(status)
        shown.append(f"{kind} {code} x{n} on {pci}: {what}")
    status = Status.FAIL if Status.FAIL in statuses else Status.WARN
    return [
        CheckResult(
            cid,
            status,
            "; ".join(shown[:6]) + (f"; +{len(shown) - 6} more" if len(shown) > 6 else ""),
            want,
            "dmesg | grep -E 'S?Xid'; act on the catalog's resolution, then reboot to clear the log"
            if status == Status.FAIL
            else "application faults: check the vLLM logs at those times",
            f"{len(events)} event(s) in the kernel log ({source})",
        )
    ]


CHECKS = Registered(("gpu.xid",), checks)
