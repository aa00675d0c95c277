"""Empty a directory another user owns, by directory fds only: the vLLM user's compile cache (issue 23.4).

Root (the single layout) empties ``[agent] cache_dir/<user>``, a tree the vLLM user writes and can change while it
is being emptied. A remover that walks by path (``rm -rf``, a listdir/isdir/unlink loop) resolves each name again
and follows what the user swapped in: a directory renamed away and replaced by a link to ``/etc`` between the
listing and the descent gets ``/etc`` emptied (seen here, 2026-12-02: a by-path walker run as root against a
planted link deleted a machine's /etc). So here:

- the directory is reached through checked directories (fsafe.open_dir: root's, nobody else can write them) and
  opened ``O_DIRECTORY | O_NOFOLLOW`` in its parent's fd; its owner and mode are checked on its own fd;
- every entry is lstat'ed in its directory's fd (``fstatat(AT_SYMLINK_NOFOLLOW)``); a non-directory (a link
  included) is unlinked in that fd: ``unlinkat`` removes the name, never what a link names, and a hard link only
  loses that one name;
- a directory is descended into by ``openat(dirfd, name, O_DIRECTORY | O_NOFOLLOW)`` and checked on the new fd:
  the same (dev, inode) the lstat saw, on the same filesystem as the top (a mount point is left, never entered).
  A link swapped in after the lstat fails the open (ELOOP/ENOTDIR) and is unlinked as the link it now is;
- no path is resolved twice: a name is only looked up in the fd of the directory it was listed in. A directory
  the user moves out of the tree while it is emptied is still that directory (the fd follows the inode), which
  held only what the user could put there.

What cannot be removed (the user refilled a directory, EPERM, a mount point, a tree deeper than MAX_DEPTH) is left
and counted, never retried in a loop; the result says what was left and why.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from typing import Callable, Optional

from vllm_nodeagent.host import fsafe
from vllm_nodeagent.host.trust import refuse_unsafe, trusted

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_DEPTH = 64  # torch/triton/vLLM caches nest ~6 deep; a deeper tree is left, not walked (fds, recursion)
MAX_LEFT_SHOWN = 5


@dataclass
class Emptied:
    """What ``empty_dir`` did: counts, the bytes the removed files held (their lstat size), what it left."""

    files: int = 0
    dirs: int = 0
    bytes: int = 0
    left: list[str] = field(default_factory=list)  # "<path>: why", at most MAX_LEFT_SHOWN
    left_count: int = 0

    def leave(self, shown: str, why: str) -> None:
        self.left_count += 1
        if len(self.left) < MAX_LEFT_SHOWN:
            self.left.append(f"{shown}: {why}")

    def summary(self) -> str:
        text = f"{self.files} files, {self.dirs} directories, {self.bytes} bytes removed"
        return text + (f"; {self.left_count} left ({'; '.join(self.left)})" if self.left_count else "")


def empty_dir(
    root: str,
    host_path: str,
    owners: Optional[frozenset[int]] = None,
    keep: tuple[str, ...] = (),
    what: str = "cache directory",
    only: Optional[tuple[str, ...]] = None,
    _before_descent: Optional[Callable[[str], None]] = None,
) -> Emptied:
    """Remove everything in ``host_path`` (under ``root``) but the top-level names in ``keep``; the directory
    itself stays; with ``only``, just these top-level names go (each whole: a directory with what is in it, a
    link as a name) and the rest stays. Its parent must be a checked directory (root's, or an owner's in
    ``owners``, writable by nobody else); the directory may belong to an owner in ``owners`` (the vLLM user).
    HostError (a Refused one for a link or a wrong owner) when the directory cannot be had; a missing one is
    FileNotFoundError-backed.
    ``_before_descent``: tests make the user's move there (between a directory's lstat and its open)."""
    parent, name = fsafe.split(host_path)
    pfd = fsafe.open_dir(root, parent, f"parent of the {what}", owners)
    try:
        top = fsafe.open_subdir(pfd, name, host_path, what, f"remove {host_path}")
    finally:
        os.close(pfd)
    try:
        st = os.fstat(top)
        refuse_unsafe(host_path, st, what, trusted(owners))
        walk = _Walk(st.st_dev, _before_descent)
        walk.empty(top, host_path.rstrip("/"), 0, set(keep), None if only is None else set(only))
        return walk.done
    finally:
        os.close(top)


class _Walk:
    """One emptying: the top's filesystem, what was done, the test hook."""

    def __init__(self, dev: int, before_descent: Optional[Callable[[str], None]]) -> None:
        self.dev = dev
        self.done = Emptied()
        self.before_descent = before_descent

    def empty(self, dfd: int, shown: str, depth: int, keep: set[str], only: Optional[set[str]] = None) -> None:
        try:
            names = sorted(os.listdir(dfd))
        except OSError as exc:
            self.done.leave(shown, exc.strerror or str(exc))
            return
        for name in names:
            if name in keep or (only is not None and name not in only):
                continue
            here = f"{shown}/{name}"
            try:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                continue  # gone meanwhile
            except OSError as exc:
                self.done.leave(here, exc.strerror or str(exc))
                continue
            if stat.S_ISDIR(st.st_mode):
                self.remove_dir(dfd, name, here, st, depth)
            else:
                self.unlink(dfd, name, here, st.st_size if stat.S_ISREG(st.st_mode) else 0)

    def unlink(self, dfd: int, name: str, shown: str, size: int) -> None:
        try:
            os.unlink(name, dir_fd=dfd)  # unlinkat(2): the name goes; a link's target is never touched
        except FileNotFoundError:
            return
        except IsADirectoryError:  # swapped for a directory since the lstat: left for the next emptying
            self.done.leave(shown, "became a directory while it was removed")
            return
        except OSError as exc:
            self.done.leave(shown, exc.strerror or str(exc))
            return
        self.done.files += 1
        self.done.bytes += size

    def remove_dir(self, dfd: int, name: str, shown: str, seen: os.stat_result, depth: int) -> None:
        if seen.st_dev != self.dev:
            self.done.leave(shown, "a mount point: not entered")
            return
        if depth >= MAX_DEPTH:
            self.done.leave(shown, f"deeper than {MAX_DEPTH} levels: not entered")
            return
        if self.before_descent is not None:
            self.before_descent(shown)
        try:
            sub = os.open(name, _DIR_FLAGS, dir_fd=dfd)
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # swapped for a link (or a file) since the lstat
                self.unlink(dfd, name, shown, 0)
                return
            self.done.leave(shown, exc.strerror or str(exc))
            return
        try:
            now = os.fstat(sub)
            if (now.st_dev, now.st_ino) != (seen.st_dev, seen.st_ino):
                self.done.leave(shown, "replaced while it was removed: not entered")
                return
            self.empty(sub, shown, depth + 1, set())
        finally:
            os.close(sub)
        try:
            os.rmdir(name, dir_fd=dfd)  # unlinkat(AT_REMOVEDIR): an empty directory of that name, nothing followed
        except FileNotFoundError:
            return
        except OSError as exc:
            self.done.leave(shown, exc.strerror or str(exc))
            return
        self.done.dirs += 1
