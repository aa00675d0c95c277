"""A lock held for a process's whole life (one daemon per state dir): ``flock`` on a file opened ``O_NOFOLLOW``
in a directory the caller already trusts; the holder's pid comes from the kernel (/proc/locks), so "held by pid
N" names the process that holds the flock now, not the last one that wrote its pid into the file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os

from vllm_nodeagent.host.proc import Procfs
from vllm_nodeagent.host.trust import not_regular


class LockHeld(Exception):
    """Another process holds the lock; the message names the file and the holder."""

    def __init__(self, path: str, holder: str) -> None:
        self.holder = holder
        super().__init__(f"{path} is held by {holder}")


def hold(path: str) -> int:
    """The fd holding an exclusive flock on ``path`` (a real path), created 0600; close it to release. Raises
    LockHeld, or OSError (a symlink: ELOOP; not a regular file or not ours: EPERM)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o600)
    try:
        st = os.fstat(fd)
        if not_regular(st) or st.st_uid != os.geteuid():
            raise OSError(errno.EPERM, f"not a regular file of uid {os.geteuid()}", path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockHeld(path, holder(fd)) from None
        with contextlib.suppress(OSError):  # best effort: the kernel's record is what holder() reads first
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd
    except BaseException:
        os.close(fd)
        raise


def holder(fd: int) -> str:
    """Who holds the flock on ``fd``'s file: "pid N" from /proc/locks, else the pid the file holds."""
    st = os.fstat(fd)
    pids = Procfs().flock_holders(os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    if pids:
        return "pid " + ", ".join(str(p) for p in pids)
    try:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return f"pid {text}" if text.isdigit() else "another process"
