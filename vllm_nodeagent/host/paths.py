"""Plain reads of real paths that steer nothing root trusts: the model files prewarm warms, the installed vLLM the
probe inspects, kernel files doctor reads (already re-rooted by ``Host.path``). What they return is data, not a
decision about whom to trust, so no owner check; every read is size-capped and a FIFO never blocks (O_NONBLOCK).
What root acts on goes through ``fsafe`` (checked dirs, O_NOFOLLOW, owner and mode on the fd) instead.

These raise OSError, as the os calls they replace did, so callers keep their one ``except OSError``.
"""

from __future__ import annotations

import errno
import os

from vllm_nodeagent.host.fsafe import MAX_READ, open_regular, read_upto

__all__ = [
    "devnull_writer",
    "entries",
    "file_stat",
    "open_read",
    "open_regular",
    "read_capped",
    "read_regular",
    "read_text_capped",
    "scan",
]


def file_stat(path: str | os.PathLike[str], follow: bool = True) -> os.stat_result:
    return os.stat(path, follow_symlinks=follow)


def entries(path: str | os.PathLike[str]) -> list[str]:
    """The names in a directory, sorted; OSError when it cannot be listed."""
    return sorted(os.listdir(path))


def scan(path: str | os.PathLike[str]) -> list[os.DirEntry[str]]:
    """A directory's entries sorted by name, with the type the listing gave (no stat per entry: the bytecode
    count and the stack warm-up walk tens of thousands of files); OSError when it cannot be listed."""
    with os.scandir(path) as it:
        return sorted(it, key=lambda e: e.name)


def open_read(path: str | os.PathLike[str], nonblock: bool = False) -> int:
    """A read-only fd (``/dev/kmsg`` wants O_NONBLOCK: a read past the last record must not wait)."""
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC | (os.O_NONBLOCK if nonblock else 0))


def devnull_writer() -> int:
    """An fd of /dev/null to sendfile(2) into (the prewarm reader's sink)."""
    return os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)


def read_capped(path: str | os.PathLike[str], cap: int = MAX_READ) -> bytes:
    """At most ``cap`` bytes from the start of a file (more is simply not read)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        chunks: list[bytes] = []
        total = 0
        while total < cap:
            chunk = os.read(fd, min(1 << 20, cap - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_text_capped(path: str | os.PathLike[str], cap: int = MAX_READ, errors: str = "strict") -> str:
    return read_capped(path, cap).decode("utf-8", errors)


def read_regular(path: str | os.PathLike[str], cap: int = MAX_READ) -> bytes:
    """A regular file's bytes; OSError when it is larger than ``cap`` (EFBIG), when its last component is a link
    or it is not a regular file (a FIFO or device is never opened: open_regular). For files of another user's
    tree whose content the agent hashes (the vLLM environment's RECORD, a model's config.json)."""
    fd = open_regular(os.fspath(path))
    try:
        data = read_upto(fd, cap, 1 << 20)
    finally:
        os.close(fd)
    if len(data) > cap:
        raise OSError(errno.EFBIG, f"larger than {cap} bytes", os.fspath(path))
    return data
