"""Keeping warmed pages resident: each file mapped shared/read-only and ``mlock``ed (``vmtouch -l``), held until
``release()``; and the one-line message when the memlock limit refuses.
"""

from __future__ import annotations

import ctypes
import os
import threading
from typing import Optional

from vllm_nodeagent.host import paths
from vllm_nodeagent.prewarm.libc import errno_error, libc, map_shared_readonly, unmap


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

    def lock_file(self, path: str, expect: Optional[tuple[int, int]] = None) -> int:
        """Map and lock one file (``expect``: the inode the scan saw, see open_regular); returns the bytes locked.
        Raises OSError with the mlock errno."""
        fd = paths.open_regular(path, expect)
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                return 0
            addr = map_shared_readonly(fd, size)
        finally:
            os.close(fd)  # the mapping keeps the file referenced
        if libc().mlock(ctypes.c_void_p(addr), size) != 0:
            exc = errno_error("mlock")
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


def lock_failure_message(path: str, exc: OSError) -> str:
    import resource

    soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    limit = "unlimited" if soft == resource.RLIM_INFINITY else f"{soft} bytes"
    return (
        f"{path}: mlock failed: {os.strerror(exc.errno or 0)}; RLIMIT_MEMLOCK is {limit} — raise it "
        "(LimitMEMLOCK=infinity in the unit, ulimit -l) or grant CAP_IPC_LOCK"
    )
