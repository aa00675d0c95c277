"""What the agent may trust, and how a refusal reads: the predicates every safe open and reader applies.

A file or directory root acts on must be one only a trusted owner (root, the running uid, an owner the caller
names) can have changed: owned by one of them and writable by nobody else (``why_unsafe``). A file the agent reads or
writes there is a regular file, never a FIFO (a reader would block), a device (opening it can act: a watchdog arms, a
tape rewinds) or a directory (``not_regular``). A refusal is one line, "refusing ...; fix: ..." (``Refused``).

The mechanisms stand on these: ``fsafe`` (walks and opens on checked directory fds, the atomic writer),
``untrusted`` (a small file another user may have written), ``lock`` (the daemon's flock file), ``files`` (the seam).
Nothing here opens anything.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Optional

from vllm_nodeagent.host.errors import HostError

_WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH
_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISLNK, "a symbolic link"),
)


class Refused(HostError):
    """A directory or file the agent will not use because someone else could have written it (or it is not the
    kind of file the agent uses there): one line, "refusing ...; fix: ..."."""

    def __init__(self, op: str, path: str, why: str, fix: str = "") -> None:
        super().__init__(op, path, OSError(errno.EPERM, why))
        self.why = why
        self.line = f"refusing {why}" + (f"; fix: {fix}" if fix else "")
        self.args = (self.line,)

    def __str__(self) -> str:
        return self.line


def trusted(owners: Optional[frozenset[int] | set[int]] = None) -> frozenset[int]:
    """Owners whose files the agent may act on: root, the running uid, and any the caller names."""
    return frozenset({0, os.geteuid(), *(owners or ())})


def owner_name(uid: int) -> str:
    # A name only for the message; a missing account shows the bare uid. Local import: accounts reads through
    # fsafe, which imports this module.
    from vllm_nodeagent.host.accounts import name_of_uid

    name = name_of_uid(uid)
    return f"uid {uid} ({name})" if name else f"uid {uid}"


def why_unsafe(st: os.stat_result, owners: frozenset[int], passing: bool = False) -> str:
    """ "" when only a trusted owner can have changed what ``st`` describes, else "owner" or "mode".

    ``passing``: a directory only walked through; a sticky one (``/tmp``) is fine there, since nobody can rename
    or remove what a trusted owner put in it.
    """
    if st.st_uid not in owners:
        return "owner"
    mode = stat.S_IMODE(st.st_mode)
    if st.st_mode & _WRITABLE_BY_OTHERS and not (passing and stat.S_ISDIR(st.st_mode) and mode & stat.S_ISVTX):
        return "mode"
    return ""


def refuse_unsafe(path: str, st: os.stat_result, what: str, owners: frozenset[int], passing: bool = False) -> None:
    """The one "refuse what others can write" check: raise Refused naming ``path``, its owner and mode."""
    why = why_unsafe(st, owners, passing)
    if not why:
        return
    seen = f"{path} (owner {owner_name(st.st_uid)}, mode {stat.S_IMODE(st.st_mode):04o})"
    if why == "owner":
        allowed = " or ".join(owner_name(u) if u else "root" for u in sorted(owners))
        raise Refused("use", path, f"a {what} not owned by {allowed}: {seen}", f"chown root {path}")
    raise Refused("use", path, f"a group- or world-writable {what}: {seen}", f"chmod go-w {path}")


def not_regular(st: os.stat_result) -> str:
    """ "" when ``st`` is a regular file, else "not a regular file (a FIFO)" (what it is instead): the one
    regular-file check; each reader raises its own error with it."""
    if stat.S_ISREG(st.st_mode):
        return ""
    kind = next((name for test, name in _KINDS if test(st.st_mode)), "")
    return f"not a regular file ({kind})" if kind else "not a regular file"
