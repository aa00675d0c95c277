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

from vllm_nodeagent.host.trust import not_regular, why_unsafe


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
        irregular = not_regular(st)  # the one regular-file check and the one "what others can write" one (trust)
        if irregular:
            raise UntrustedFileError(f"{path} is {irregular}: refused")
        why = why_unsafe(st, frozenset(owners))
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


def others_can_change(host_real_root: str, path: str, trusted: set[int], _hops: int = 0) -> str:
    """Why someone other than root and ``trusted`` uids could change what ``path`` (an absolute host path under
    the root ``host_real_root``) names, "" when nobody can. Every component from "/" down is checked (lstat, so a
    symlink's own directory counts, then its target is checked the same way):

    - owned by a uid that is not root and not trusted → that owner can change it;
    - group- or world-writable → others can replace entries, unless the directory is sticky and root's (like
      /tmp) and the next component exists and is owned by root or a trusted uid (others may not rename it);
    - a missing component inside a directory others can write → they can create it.
    """
    owners = {0} | trusted
    base = host_real_root.rstrip("/")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    current = ""
    for depth in range(len(parts) + 1):
        shown = current or "/"
        try:
            st = os.lstat(base + current if current else base or "/")
        except FileNotFoundError:
            return ""  # below a safe directory: only root or a trusted uid can create it
        except OSError as exc:
            return f"{shown}: {exc.strerror}"
        if stat.S_ISLNK(st.st_mode):
            if st.st_uid not in owners:
                return f"{shown} is a symlink owned by uid {st.st_uid}"
            if _hops >= 40:
                return f"{shown}: too many levels of symbolic links"
            target = os.readlink(base + current)
            resolved = target if target.startswith("/") else os.path.join(os.path.dirname(current) or "/", target)
            rest = "/".join(parts[depth:])
            return others_can_change(host_real_root, os.path.normpath(f"{resolved}/{rest}"), trusted, _hops + 1)
        if st.st_uid not in owners:
            return f"{shown} is owned by uid {st.st_uid} (not root or the vLLM user)"
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            sticky_root = bool(st.st_mode & stat.S_ISVTX) and st.st_uid == 0
            if depth == len(parts) or not sticky_root:
                return f"{shown} is writable by others (mode {stat.S_IMODE(st.st_mode):04o})"
            try:
                nxt = os.lstat(f"{base}{current}/{parts[depth]}")
            except FileNotFoundError:
                return f"{current}/{parts[depth]} does not exist and {shown} lets anyone create it"
            except OSError as exc:
                return f"{current}/{parts[depth]}: {exc.strerror}"
            if nxt.st_uid not in owners:
                return f"{current}/{parts[depth]} is owned by uid {nxt.st_uid} in sticky {shown}"
        if depth < len(parts):
            current = f"{current}/{parts[depth]}"
    return ""


def interpreter_unsafe(python: str, runner: int) -> str:
    """Why someone other than root and ``runner`` (the uid about to run it) could change what ``python`` runs, ""
    when nobody can: the executable and every directory on its way (links resolved, each checked), and the
    ``pyvenv.cfg`` Python reads beside the executable or one level up (its ``home`` picks the standard library
    that ``-I -S -m compileall`` imports). A venv in the vLLM user's home is that user's program: root must not
    run it."""
    real = os.path.realpath(python)
    for path in dict.fromkeys([python, real]):
        why = others_can_change("/", path, {runner})
        if why:
            return f"the interpreter {python}: {why}"
    for exe_dir in dict.fromkeys([os.path.dirname(python), os.path.dirname(real)]):
        for cfg in (os.path.join(exe_dir, "pyvenv.cfg"), os.path.join(os.path.dirname(exe_dir), "pyvenv.cfg")):
            why = others_can_change("/", cfg, {runner})
            if why:
                return f"the interpreter {python}: {why}"
    return ""
