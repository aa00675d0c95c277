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
from collections.abc import Iterator, Sequence
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


def _page_map(fd: int, size: int) -> Iterator[tuple[int, bytes]]:
    """(byte offset, one byte per page: 1 resident, 0 not) per window of the file, by ``mincore(2)`` over a
    shared read-only mapping."""
    if size <= 0:
        return
    addr = map_shared_readonly(fd, size)
    try:
        vec = (ctypes.c_ubyte * ((min(size, _MINCORE_WINDOW) + PAGE_SIZE - 1) // PAGE_SIZE))()
        off = 0
        while off < size:
            length = min(size - off, _MINCORE_WINDOW)
            pages = (length + PAGE_SIZE - 1) // PAGE_SIZE
            if libc().mincore(ctypes.c_void_p(addr + off), length, vec) != 0:
                raise errno_error("mincore")
            yield off, bytes(vec)[:pages].translate(_LOWBIT)
            off += length
    finally:
        unmap(addr, size)


def mincore_pages(fd: int, size: int) -> int:
    """Pages of the file in the page cache, by ``mincore(2)``."""
    return sum(window.count(1) for _, window in _page_map(fd, size))


def resident_ranges(fd: int, size: int, join_pages: int = 16) -> list[tuple[int, int]]:
    """The byte ranges (offset, length) of the file in the page cache, by ``mincore(2)``; runs fewer than
    ``join_pages`` pages apart are joined (one read of a small gap costs less than another request)."""
    runs: list[list[int]] = []  # [first page, end page)
    for off, window in _page_map(fd, size):
        base = off // PAGE_SIZE
        start = window.find(1)
        while start >= 0:
            end = window.find(0, start)
            end = len(window) if end < 0 else end
            if runs and base + start - runs[-1][1] <= join_pages:
                runs[-1][1] = base + end
            else:
                runs.append([base + start, base + end])
            start = window.find(1, end)
    return [(a * PAGE_SIZE, min(b * PAGE_SIZE, size) - a * PAGE_SIZE) for a, b in runs]


def resident_in_ranges(fd: int, size: int, ranges: Sequence[tuple[int, int]]) -> int:
    """Resident bytes of the file within ``ranges`` (whole pages, capped at each range's length)."""
    if not ranges:
        return 0
    total = 0
    maps = list(_page_map(fd, size))
    for first, length in ranges:
        a, b = first // PAGE_SIZE, (min(first + length, size) + PAGE_SIZE - 1) // PAGE_SIZE
        pages = 0
        for off, window in maps:
            lo = off // PAGE_SIZE
            pages += window[max(a - lo, 0) : max(b - lo, 0)].count(1)
        total += min(pages * PAGE_SIZE, length)
    return total


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
        if f.ranges:  # learned pages: what counts is those, not the rest of the file (mincore: per page)
            res.used.add("mincore")
            return resident_in_ranges(fd, st.st_size, f.ranges)
        return min(res.bytes_fd(fd, st.st_size), f.size)
    finally:
        os.close(fd)
