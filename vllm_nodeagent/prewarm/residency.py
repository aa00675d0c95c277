"""Page-cache residency of files: ``cachestat(2)`` where the kernel has it, else ``mincore(2)`` over a shared
read-only mapping (libc.py); and the rule for files whose residency the kernel hides from this user.

Residency is the proof that prewarm worked (before/after counts) and what doctor's storage check reports.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import platform
import threading
from typing import TYPE_CHECKING, Optional

from vllm_nodeagent.host import paths
from vllm_nodeagent.prewarm.libc import errno_error, libc, map_shared_readonly, unmap

if TYPE_CHECKING:
    from vllm_nodeagent.prewarm.targets import WarmFile

PAGE_SIZE = mmap.PAGESIZE
# Syscalls added after 5.1 share one number on every architecture but alpha (which adds 110).
SYS_CACHESTAT = 561 if platform.machine().startswith("alpha") else 451
ENV_METHOD = "VLLM_NODEAGENT_RESIDENCY"  # "cachestat", "mincore" or "auto" (default)

_LOWBIT = bytes(i & 1 for i in range(256))
_MINCORE_WINDOW = 1 << 30  # bytes of mapping inspected per mincore call (bounds the vector's size)


class ResidencyError(OSError):
    """A residency query failed for one file."""


class _CachestatRange(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _Cachestat(ctypes.Structure):
    _fields_ = [
        ("nr_cache", ctypes.c_uint64),
        ("nr_dirty", ctypes.c_uint64),
        ("nr_writeback", ctypes.c_uint64),
        ("nr_evicted", ctypes.c_uint64),
        ("nr_recently_evicted", ctypes.c_uint64),
    ]


def cachestat_pages(fd: int) -> int:
    """Pages of the file in the page cache, by ``cachestat(2)`` (Linux >= 6.5); raises OSError (ENOSYS...)."""
    rng = _CachestatRange(0, 0)  # len 0 = to the end of the file
    cs = _Cachestat()
    rc = libc().syscall(
        ctypes.c_long(SYS_CACHESTAT), ctypes.c_int(fd), ctypes.byref(rng), ctypes.byref(cs), ctypes.c_uint(0)
    )
    if rc != 0:
        raise errno_error("cachestat")
    return int(cs.nr_cache)


def mincore_pages(fd: int, size: int) -> int:
    """Pages of the file in the page cache, by ``mincore(2)`` over a shared read-only mapping."""
    if size <= 0:
        return 0
    addr = map_shared_readonly(fd, size)
    try:
        resident = 0
        vec = (ctypes.c_ubyte * ((min(size, _MINCORE_WINDOW) + PAGE_SIZE - 1) // PAGE_SIZE))()
        off = 0
        while off < size:
            length = min(size - off, _MINCORE_WINDOW)
            pages = (length + PAGE_SIZE - 1) // PAGE_SIZE
            if libc().mincore(ctypes.c_void_p(addr + off), length, vec) != 0:
                raise errno_error("mincore")
            resident += bytes(vec)[:pages].translate(_LOWBIT).count(1)
            off += length
        return resident
    finally:
        unmap(addr, size)


_probe_lock = threading.Lock()
_cachestat_works: Optional[bool] = None
# Per-file reasons to fall back to mincore: EPERM since Linux 6.10 when the caller may not write the file (nor
# owns it) - cachestat would be a side channel otherwise; EOPNOTSUPP on hugetlbfs.
_PER_FILE_FALLBACK = (errno.EPERM, errno.EOPNOTSUPP, errno.EINVAL)


def _cachestat_available(fd: int) -> bool:
    """Whether the kernel has cachestat(2) (probed once per process on the first file)."""
    global _cachestat_works  # noqa: PLW0603 - a per-process probe result
    with _probe_lock:
        if _cachestat_works is None:
            try:
                cachestat_pages(fd)
                _cachestat_works = True
            except OSError as exc:
                if exc.errno == errno.ENOSYS:
                    _cachestat_works = False
                elif exc.errno not in _PER_FILE_FALLBACK:
                    raise
        return _cachestat_works is not False


def resolve_method(method: Optional[str] = None) -> str:
    """ "auto", "cachestat" or "mincore"; ``None`` reads ``$VLLM_NODEAGENT_RESIDENCY`` (default auto)."""
    chosen = (method or os.environ.get(ENV_METHOD) or "auto").strip().lower()
    if chosen not in ("auto", "cachestat", "mincore"):
        raise ValueError(f"residency method must be auto, cachestat or mincore, got {chosen!r}")
    return chosen


class Residency:
    """Counts resident bytes of files. ``method``: what was used ("cachestat", "mincore" or
    "cachestat+mincore" when some files fell back)."""

    def __init__(self, method: Optional[str] = None) -> None:
        self.requested = resolve_method(method)
        self.used: set[str] = set()

    @property
    def method(self) -> str:
        if not self.used:
            return "mincore" if self.requested == "mincore" else "cachestat"
        return "+".join(sorted(self.used))

    def pages_fd(self, fd: int, size: int) -> int:
        if self.requested == "auto" and _cachestat_available(fd):
            try:
                pages = cachestat_pages(fd)
                self.used.add("cachestat")
                return pages
            except OSError as exc:
                if exc.errno not in _PER_FILE_FALLBACK:
                    raise
        elif self.requested == "cachestat":
            self.used.add("cachestat")
            return cachestat_pages(fd)
        self.used.add("mincore")
        return mincore_pages(fd, size)

    def bytes_fd(self, fd: int, size: int) -> int:
        """Resident bytes of an open file of ``size`` bytes, capped at the size (the last page is partial)."""
        return min(self.pages_fd(fd, size) * PAGE_SIZE, size)

    def bytes_path(self, path: str) -> tuple[int, int]:
        """(resident bytes, size) of a file; raises OSError."""
        fd = paths.open_regular(path)
        try:
            size = os.fstat(fd).st_size
            return self.bytes_fd(fd, size), size
        finally:
            os.close(fd)


HIDDEN = -1  # resident_bytes: the kernel hides this file's page-cache residency from this process


def residency_hidden(st: os.stat_result, path: str) -> bool:
    """mincore(2) and cachestat(2) report every page as resident to a caller that neither owns the file nor may
    write it (the kernel's page-cache side-channel guard). Seen on the lent H100 (issue 17): ``serve`` as the vLLM
    user over root-owned model files took a cold 16 GB checkpoint for "already resident" and read nothing."""
    return os.geteuid() != 0 and st.st_uid != os.geteuid() and not os.access(path, os.W_OK)


def resident_bytes(res: Residency, f: WarmFile) -> Optional[int]:
    """Resident bytes of the file we resolved; None when it is gone or was replaced; HIDDEN when the kernel will
    not say. Raises OSError."""
    try:
        fd = paths.open_regular(f.real)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (f.dev, f.ino):
            return None
        if residency_hidden(st, f.real):
            return HIDDEN
        return min(res.bytes_fd(fd, st.st_size), f.size)
    finally:
        os.close(fd)
