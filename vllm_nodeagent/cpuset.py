"""Where this process's cpuset lives, in every layout a cluster node has: cgroup v2 (at /sys/fs/cgroup, /dev/cgroup,
Slurm's /cgroup/unified), cgroup v1's cpuset controller (/sys/fs/cgroup/cpuset, Slurm's /cgroup/cpuset with its
release_agent, ``noprefix`` mounts) and the legacy cpuset filesystem (/dev/cpuset, files ``cpus``/``mems``).

The rule, hwloc's (topology-linux.c) made stricter: the hierarchy holding the cpuset controller comes from the
mount table (/proc/self/mountinfo, else /proc/self/mounts or /proc/mounts; a cgroup2 mount counts only when its
cgroup.controllers offers cpuset), else from the standard places; the task's path from /proc/self/cpuset (the
kernel's answer for the cpuset controller, whichever hierarchy holds it), else from /proc/self/cgroup. What was
used is returned, for ``topology --json``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Optional

from vllm_nodeagent.host import Host
from vllm_nodeagent.host.parse import ParseError, parse_cpulist

CGROUP2, CGROUP1, CPUSET_FS = "cgroup2", "cgroup1", "cpuset"
FILES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    CGROUP2: (("cpuset.cpus.effective",), ("cpuset.mems.effective",)),
    CGROUP1: (("cpuset.effective_cpus", "cpuset.cpus"), ("cpuset.effective_mems", "cpuset.mems")),
    CPUSET_FS: (("effective_cpus", "cpus"), ("effective_mems", "mems")),  # noprefix: no "cpuset." on the names
}
MOUNT_TABLES = ("/proc/self/mountinfo", "/proc/self/mounts", "/proc/mounts")
_OCTAL = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    point: str
    fstype: str
    options: frozenset[str]  # mount and superblock options (cgroup v1 lists its controllers there)
    root: str = "/"  # mountinfo only: the directory of the filesystem mounted here


@dataclass(frozen=True)
class Allowed:
    ids: Optional[frozenset[int]]  # None: nothing restricts (or the source could not be read)
    source: str  # says where the set came from, for the exclusion reason


@dataclass(frozen=True)
class CpusetSource:
    """What the cpuset discovery used (all "" when no cpuset hierarchy was found)."""

    kind: str = ""  # cgroup2 | cgroup1 | cpuset
    mount: str = ""
    mounts_from: str = ""  # the mount table read, or "standard place"
    path: str = ""  # the task's cpuset path inside the hierarchy
    path_from: str = ""  # /proc/self/cpuset | /proc/self/cgroup
    cpus_file: str = ""
    mems_file: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _unescape(text: str) -> str:
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), text)  # the kernel writes " " as \040


def parse_mountinfo(text: str) -> list[Mount]:
    """proc(5): ``id parent major:minor root point options [optional...] - fstype source super-options``."""
    out: list[Mount] = []
    for line in text.splitlines():
        head, sep, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if not sep or len(fields) < 6 or len(rest) < 3:
            continue
        opts = frozenset(fields[5].split(",")) | frozenset(rest[2].split(","))
        out.append(Mount(_unescape(fields[4]), rest[0], opts, _unescape(fields[3])))
    return out


def parse_mounts(text: str) -> list[Mount]:
    """fstab format (/proc/mounts): ``source point fstype options dump pass``."""
    out: list[Mount] = []
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 4:
            out.append(Mount(_unescape(f[1]), f[2], frozenset(f[3].split(","))))
    return out


def read_mounts(host: Host) -> tuple[list[Mount], str]:
    for path in MOUNT_TABLES:
        text = host.read_or(path)
        if text:
            mounts = parse_mountinfo(text) if path.endswith("mountinfo") else parse_mounts(text)
            if mounts:
                return mounts, path
    return [], ""


def hierarchies(host: Host) -> tuple[list[tuple[str, Mount]], str]:
    """The mounts that can hold the cpuset controller, in mount order, and where they were found."""
    mounts, table = read_mounts(host)
    found: list[tuple[str, Mount]] = []
    for m in mounts:
        if m.fstype == "cgroup2":
            controllers = (host.read_or(f"{m.point.rstrip('/')}/cgroup.controllers") or "").split()
            if "cpuset" in controllers:
                found.append((CGROUP2, m))
        elif m.fstype == "cpuset":
            found.append((CPUSET_FS, m))
        elif m.fstype == "cgroup" and "cpuset" in m.options:
            found.append((CPUSET_FS if "noprefix" in m.options else CGROUP1, m))
    if found or mounts:
        return found, table
    # No mount table (a partial tree): the places hwloc tries.
    for kind, point, probe in (
        (CGROUP2, "/sys/fs/cgroup", "cpuset.cpus.effective"),
        (CGROUP2, "/sys/fs/cgroup", "cgroup.controllers"),
        (CGROUP1, "/sys/fs/cgroup/cpuset", "cpuset.cpus"),
        (CGROUP1, "/sys/fs/cgroup/cpuset", "cpuset.effective_cpus"),
        (CPUSET_FS, "/dev/cpuset", "cpus"),
    ):
        if host.exists(f"{point}/{probe}"):
            return [(kind, Mount(point, kind, frozenset()))], "standard place"
    return [], ""


def task_path(host: Host, kind: str) -> tuple[str, str]:
    """(the task's path in the cpuset hierarchy, the file that said so); ("", "") when unknown."""
    raw = host.read_or("/proc/self/cpuset")
    if raw and raw.strip().startswith("/"):
        return raw.strip(), "/proc/self/cpuset"
    for line in (host.read_or("/proc/self/cgroup") or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if (kind == CGROUP2 and parts[0] == "0" and controllers == "") or (
            kind != CGROUP2 and "cpuset" in controllers.split(",")
        ):
            return path.strip(), "/proc/self/cgroup"
    return "", ""


def _read_set(host: Host, path: str, warnings: list[str]) -> Optional[frozenset[int]]:
    raw = host.read_or(path)
    if raw is None:
        return None
    try:
        return frozenset(parse_cpulist(raw))
    except ParseError as exc:
        warnings.append(f"{path}: {exc}; ignored")
        return None


def _files(host: Host, kind: str, mount: Mount, path: str, warnings: list[str]) -> tuple[Allowed, Allowed, str, str]:
    # The nearest ancestor with the files bounds a cgroup v2 directory where the controller is not enabled.
    rel = path.strip("/")
    root = mount.root.strip("/")
    if root and (rel == root or rel.startswith(root + "/")):
        rel = rel[len(root) :].strip("/")  # a mount of a subtree (mountinfo's root field): paths are below it
    while True:
        base = mount.point.rstrip("/") + ("/" + rel if rel else "")
        got: list[tuple[Allowed, str]] = []
        for names in FILES[kind]:
            found = (Allowed(None, ""), "")
            for name in names:
                ids = _read_set(host, f"{base}/{name}", warnings)
                if ids is not None:
                    text = (host.read_or(f"{base}/{name}") or "").strip().strip("\x00") or "empty"
                    found = (Allowed(ids, f"{base}/{name} = {text}"), f"{base}/{name}")
                    break
            got.append(found)
        # An empty set does not happen for a live cgroup with tasks; treat it as "not set here".
        if any(a.ids for a, _ in got) or not rel:
            (cpus, cpus_file), (mems, mems_file) = got
            return (
                cpus if cpus.ids else Allowed(None, ""),
                mems if mems.ids else Allowed(None, ""),
                cpus_file if cpus.ids else "",
                mems_file if mems.ids else "",
            )
        rel = rel.rsplit("/", 1)[0] if "/" in rel else ""


def cgroup_allowed(host: Host, warnings: list[str]) -> tuple[Allowed, Allowed, CpusetSource]:
    """(CPUs, mems) of this process's cpuset, and what was read to find them."""
    found, table = hierarchies(host)
    for kind, mount in found:
        path, path_from = task_path(host, kind)
        if not path:
            continue
        cpus, mems, cpus_file, mems_file = _files(host, kind, mount, path, warnings)
        if cpus.ids is not None or mems.ids is not None:
            return cpus, mems, CpusetSource(kind, mount.point, table, path, path_from, cpus_file, mems_file)
    kind, point = (found[0][0], found[0][1].point) if found else ("", "")
    return Allowed(None, ""), Allowed(None, ""), CpusetSource(kind, point, table)
