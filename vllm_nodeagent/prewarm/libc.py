"""The C library calls Python's own ``mmap`` object cannot make, through ctypes (nothing shells out).

A read-only ``mmap.mmap`` does not expose its address (mincore and mlock need it), and a private writable one
would make ``mlock`` copy every page: so residency.py and mlock.py map files here, shared and read-only.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from typing import Optional

_PROT_READ = 0x1
_MAP_SHARED = 0x01
_MAP_FAILED = ctypes.c_void_p(-1).value

_libc_lock = threading.Lock()
_libc_obj: Optional[ctypes.CDLL] = None


def libc() -> ctypes.CDLL:
    """The C library with argument types declared for the calls used here."""
    global _libc_obj  # noqa: PLW0603 - one lazily built handle per process
    with _libc_lock:
        if _libc_obj is None:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            lib.mmap.restype = ctypes.c_void_p
            lib.mmap.argtypes = [
                ctypes.c_void_p,
                ctypes.c_size_t,
                ctypes.c_int,
                ctypes.c_int,
                ctypes.c_int,
                ctypes.c_long,
            ]
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


def errno_error(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def map_shared_readonly(fd: int, length: int) -> int:
    """``mmap(NULL, length, PROT_READ, MAP_SHARED, fd, 0)``; returns the address."""
    addr = libc().mmap(None, length, _PROT_READ, _MAP_SHARED, fd, 0)
    if addr is None or addr == _MAP_FAILED:
        raise errno_error("mmap")
    return int(addr)


def unmap(addr: int, length: int) -> None:
    if libc().munmap(ctypes.c_void_p(addr), length) != 0:
        raise errno_error("munmap")
