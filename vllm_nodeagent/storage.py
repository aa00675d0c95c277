"""What kind of storage a file lies on, read from sysfs and mountinfo through the host seam, and the prewarm
reader that suits it.

Measured (bench/prewarm.py --designs, bench/README.md): on this project's virtio VM disk (one hardware queue,
nr_requests 256, reported rotational) 4 threads over 256 MiB segments read a median 1.34x faster per round than
one sequential stream, whatever its call size, readahead or WILLNEED window: the host behind a virtio disk serves
many requests at once. The same holds, more so, for NVMe (many hardware queues) and for network filesystems
(each stream waits for round trips). Only a real spinning disk loses from several streams (every switch is a
seek), and memory (tmpfs, zram) has nothing to gain: those get one sequential stream per file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from vllm_nodeagent.host import Host, HostError

# Filesystems whose reads each wait for a network round trip: parallel streams multiply throughput.
NETWORK_FS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "lustre",
        "gpfs",
        "beegfs",
        "ceph",
        "glusterfs",
        "9p",
        "virtiofs",
        "afs",
        "orangefs",
        "pvfs2",
    }
)


@dataclass(frozen=True)
class Storage:
    """The device (or filesystem) under a file, as far as sysfs tells."""

    kind: str  # "nvme", "network", "rotational", "ssd", "virtio", "memory", "unknown"
    name: str  # block device name (vda, nvme0n1, md0) or filesystem type for network/memory filesystems
    rotational: Optional[bool] = None
    nr_requests: Optional[int] = None
    hw_queues: Optional[int] = None
    read_ahead_kb: Optional[int] = None

    @property
    def parallel(self) -> bool:
        """Whether several concurrent streams read faster than one sequential stream (see the module doc)."""
        return self.kind not in ("rotational", "memory")

    def describe(self) -> str:
        facts = [
            f"{k}={v}"
            for k, v in (
                ("rotational", None if self.rotational is None else int(self.rotational)),
                ("nr_requests", self.nr_requests),
                ("hw_queues", self.hw_queues),
                ("read_ahead_kb", self.read_ahead_kb),
            )
            if v is not None
        ]
        return " ".join([f"{self.name} ({self.kind})", *facts])


def _int(host: Host, path: str) -> Optional[int]:
    text = host.read_or(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _fs_type(host: Host, dev: int) -> str:
    """The filesystem type of the mount whose device number is ``dev`` (from /proc/self/mountinfo)."""
    want = f"{os.major(dev)}:{os.minor(dev)}"
    text = host.read_or("/proc/self/mountinfo") or ""
    for line in text.splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[2] == want and " - " in line:
            after = line.split(" - ", 1)[1].split()
            if after:
                return after[0]
    return ""


def _block_kind(host: Host, sysdir: str, depth: int = 0) -> Storage:
    """Classify the whole-disk (or dm/md) device whose sysfs directory is ``sysdir``."""
    name = sysdir.rstrip("/").rsplit("/", 1)[-1]
    q = f"{sysdir}/queue"
    rot = _int(host, f"{q}/rotational")
    nr = _int(host, f"{q}/nr_requests")
    ra = _int(host, f"{q}/read_ahead_kb")
    hwq = len(host.listdir(f"{sysdir}/mq")) or None
    facts = dict(rotational=None if rot is None else bool(rot), nr_requests=nr, hw_queues=hwq, read_ahead_kb=ra)
    slaves = host.listdir(f"{sysdir}/slaves")
    if slaves and depth < 4:  # dm / md: what the members are (an md RAID of NVMe drives reads like NVMe)
        kinds = {_block_kind(host, host.realpath(f"{sysdir}/slaves/{s}"), depth + 1).kind for s in slaves}
        kind = kinds.pop() if len(kinds) == 1 else "unknown"
        return Storage(kind, name, **facts)  # type: ignore[arg-type]
    driver_link = host.realpath(f"{sysdir}/device/driver") if host.exists(f"{sysdir}/device/driver") else ""
    driver = driver_link.rsplit("/", 1)[-1]
    if name.startswith("nvme"):
        kind = "nvme"
    elif name.startswith("vd") or driver == "virtio_blk":
        kind = "virtio"  # often reported rotational whatever backs it; one queue on most hypervisors
    elif name.startswith(("zram", "ram", "pmem")):
        kind = "memory"
    elif rot:
        kind = "rotational"
    elif rot == 0:
        kind = "ssd"
    else:
        kind = "unknown"
    return Storage(kind, name, **facts)  # type: ignore[arg-type]


def storage_of(host: Host, dev: int) -> Storage:
    """The storage behind device number ``dev`` (``os.stat(f).st_dev``). Never raises: "unknown" when unsure."""
    if os.major(dev) == 0:  # no block device: a network, FUSE, memory or overlay filesystem
        fs = _fs_type(host, dev)
        base = fs.split(".", 1)[0]
        if base in NETWORK_FS or base == "fuse" or fs.startswith("fuse."):
            return Storage("network", fs)
        if fs in ("tmpfs", "ramfs", "hugetlbfs"):
            return Storage("memory", fs)
        return Storage("unknown", fs or "?")
    link = f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}"
    try:
        sysdir = host.realpath(link)
    except HostError:
        return Storage("unknown", link)
    if not host.exists(f"{sysdir}/queue") and host.exists(f"{sysdir}/partition"):
        sysdir = sysdir.rsplit("/", 1)[0]  # a partition: the disk holds the queue
    if not host.exists(f"{sysdir}/queue"):
        return Storage("unknown", sysdir.rsplit("/", 1)[-1])
    return _block_kind(host, sysdir)
