"""Reading a small file that someone other than root may have written (the vLLM user's pid and plan files in the
split layout): never through a symlink, only a regular file, only from an expected owner, never more than a cap.

Each refusal is one ``UntrustedFileError`` line naming the file and what is wrong with it; the content is never
echoed. The path is a real path (already re-rooted by ``Host.path``).
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Optional

from vllm_nodeagent.host.fsafe import why_unsafe


class UntrustedFileError(Exception):
    """The file exists but is refused; the message is one line naming the file."""


def read_capped(path: str, max_bytes: int, owners: set[int]) -> Optional[bytes]:
    """The file's bytes; None when it does not exist. O_NOFOLLOW: a symlink is refused, not followed;
    O_NONBLOCK: a FIFO planted in its place cannot hang the reader."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UntrustedFileError(f"{path} is a symbolic link: refused (never followed)") from None
        raise UntrustedFileError(f"{path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UntrustedFileError(f"{path} is not a regular file: refused")
        why = why_unsafe(st, frozenset(owners))  # the one "refuse what others can write" predicate (fsafe)
        if why == "owner":
            want = ", ".join(str(u) for u in sorted(owners))
            raise UntrustedFileError(f"{path} is owned by uid {st.st_uid}, not by uid {want}: refused")
        if why == "mode":
            mode = stat.S_IMODE(st.st_mode)
            raise UntrustedFileError(f"{path} is group- or world-writable (mode {mode:04o}): refused")
        if st.st_size > max_bytes:
            raise UntrustedFileError(f"{path} has {st.st_size} bytes, more than the {max_bytes} allowed: refused")
        data = os.read(fd, max_bytes + 1)
        if len(data) > max_bytes:  # grew after the fstat
            raise UntrustedFileError(f"{path} has more than the {max_bytes} bytes allowed: refused")
        return data
    except OSError as exc:
        raise UntrustedFileError(f"{path}: {exc.strerror}") from None
    finally:
        os.close(fd)
