"""Page-cache residency of files: ``cachestat(2)`` where the kernel has it, else ``mincore(2)`` over an mmap.

Also the libc ``mmap``/``mlock`` pair that keeps pages resident (``vmtouch -l``). Everything here goes through
ctypes; nothing shells out. Python's own ``mmap`` object is not used for mincore/mlock because a read-only
mapping does not expose its address, and a private writable one would make ``mlock`` copy every page.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import os
import platform
import threading
from typing import Optional

PAGE_SIZE = mmap.PAGESIZE
# Syscalls added after 5.1 share one number on every architecture but alpha (which adds 110).
SYS_CACHESTAT = 561 if platform.machine().startswith("alpha") else 451
ENV_METHOD = "VLLM_NODEAGENT_RESIDENCY"  # "cachestat", "mincore" or "auto" (default)

_PROT_READ = 0x1
_MAP_SHARED = 0x01
_MAP_FAILED = ctypes.c_void_p(-1).value
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


_libc_lock = threading.Lock()
_libc_obj: Optional[ctypes.CDLL] = None


def libc() -> ctypes.CDLL:
    """The C library with argument types declared for the calls used here."""
    global _libc_obj  # noqa: PLW0603 - one lazily built handle per process
    with _libc_lock:
        if _libc_obj is None:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            lib.mmap.restype = ctypes.c_void_p
            lib.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                 ctypes.c_long]
            lib.munmap.restype = ctypes.c_int
            lib.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
            lib.mincore.restype = ctypes.c_int
            lib.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
            lib.mlock.restype = ctypes.c_int
            lib.mlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
            lib.munlock.restype = ctypes.c_int
            lib.munlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
            lib.syscall.restype = ctypes.c_long
            _libc_obj = lib
        return _libc_obj


def _oserror(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def map_shared_readonly(fd: int, length: int) -> int:
    """``mmap(NULL, length, PROT_READ, MAP_SHARED, fd, 0)``; returns the address."""
    addr = libc().mmap(None, length, _PROT_READ, _MAP_SHARED, fd, 0)
    if addr is None or addr == _MAP_FAILED:
        raise _oserror("mmap")
    return int(addr)


def unmap(addr: int, length: int) -> None:
    if libc().munmap(ctypes.c_void_p(addr), length) != 0:
        raise _oserror("munmap")


def cachestat_pages(fd: int) -> int:
    """Pages of the file in the page cache, by ``cachestat(2)`` (Linux >= 6.5); raises OSError (ENOSYS...)."""
    rng = _CachestatRange(0, 0)  # len 0 = to the end of the file
    cs = _Cachestat()
    rc = libc().syscall(ctypes.c_long(SYS_CACHESTAT), ctypes.c_int(fd), ctypes.byref(rng), ctypes.byref(cs),
                        ctypes.c_uint(0))
    if rc != 0:
        raise _oserror("cachestat")
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
                raise _oserror("mincore")
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
    """"auto", "cachestat" or "mincore"; ``None`` reads ``$VLLM_NODEAGENT_RESIDENCY`` (default auto)."""
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
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            return self.bytes_fd(fd, size), size
        finally:
            os.close(fd)


class LockedPages:
    """Files mapped and ``mlock``ed; ``release()`` unlocks and unmaps (idempotent)."""

    def __init__(self) -> None:
        self._maps: list[tuple[str, int, int]] = []
        self._lock = threading.Lock()

    @property
    def files(self) -> int:
        return len(self._maps)

    @property
    def bytes(self) -> int:
        return sum(length for _, _, length in self._maps)

    def lock_file(self, path: str) -> int:
        """Map and lock one file; returns the bytes locked. Raises OSError with the mlock errno."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                return 0
            addr = map_shared_readonly(fd, size)
        finally:
            os.close(fd)  # the mapping keeps the file referenced
        if libc().mlock(ctypes.c_void_p(addr), size) != 0:
            exc = _oserror("mlock")
            unmap(addr, size)
            raise exc
        with self._lock:
            self._maps.append((path, addr, size))
        return size

    def release(self) -> None:
        with self._lock:
            maps, self._maps = self._maps, []
        for _, addr, size in maps:
            libc().munlock(ctypes.c_void_p(addr), size)
            unmap(addr, size)
