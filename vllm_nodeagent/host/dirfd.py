"""Reach a directory under the root without following a symbolic link anywhere on the way, for doctor's look at the
metrics textfile directory (issue 25). The writer itself is the ground floor's one atomic writer
(``fsafe.replace_file(..., through_others=True)``, issue 22).

Why: node_exporter's textfile directory on Debian sits below ``/var/lib/prometheus``, which belongs to the
``prometheus`` user. A root writer that resolves the path by name would follow a link that user swapped in and
write wherever it points. Here every component is opened relative to its parent's fd with
``O_DIRECTORY | O_NOFOLLOW``, so a link anywhere on the way is an error (ELOOP/ENOTDIR), and the writer's temp
file gets a random name created with ``O_EXCL`` in the directory's fd, then renamed over the target by fd.
"""

from __future__ import annotations

import errno
import os
from typing import Optional

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_dir(root: str, host_dir: str, create_mode: Optional[int] = None) -> int:
    """An fd of ``host_dir`` (absolute, as on the host) under ``root``. A missing component is created with
    ``create_mode`` (exactly, owned by the caller) when given, else FileNotFoundError. Raises OSError naming the
    host path of the component that failed."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # the root itself is the admin's choice
    done = ""
    try:
        for part in [p for p in host_dir.split("/") if p not in ("", ".")]:
            if part == "..":
                raise OSError(errno.EINVAL, "'..' in a path that must not move", host_dir)
            done += "/" + part
            try:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if create_mode is None:
                    raise
                os.mkdir(part, create_mode, dir_fd=fd)
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.fchmod(nxt, create_mode)  # not the umask's idea of it
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise OSError(exc.errno, "a symbolic link or a non-directory on the way: refused", done) from exc
                raise OSError(exc.errno, exc.strerror, done) from exc
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def dir_owner_mode(root: str, host_dir: str) -> tuple[int, int]:
    """(uid, mode bits) of ``host_dir``, reached the same way (no link followed); raises OSError."""
    fd = open_dir(root, host_dir)
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    return st.st_uid, st.st_mode & 0o7777
