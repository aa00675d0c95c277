"""The one seam through which the agent touches /sys, /proc, /etc and /var.

Every host path is written as the absolute path it has on a real machine ("/proc/sys/vm/max_map_count") and
re-rooted under ``Host.root``. Tests point the root at a fake tree; production uses "/". Symbolic links are
resolved the way a chroot would resolve them: an absolute target restarts at the root and ".." never climbs
above it, so nothing read or written through a Host can land outside its root.
"""

from __future__ import annotations

import errno
import fnmatch
import os
from pathlib import Path
from typing import Optional

from vllm_nodeagent.host import fsafe
from vllm_nodeagent.host.errors import HostError
from vllm_nodeagent.host.trust import not_regular

__all__ = ["Host", "HostError"]  # HostError lives in errors.py (fsafe needs it too); still importable here

_MAX_LINK_FOLLOWS = 40
READ_CAP = 64 << 20  # /proc/interrupts of a 512-CPU host is a few MiB; a 3 GiB file in a --root tree is not read


class Host:
    """Reads and writes host paths under ``root``."""

    def __init__(self, root: str | os.PathLike[str] = "/") -> None:
        self.root = Path(os.path.abspath(os.fspath(root)))
        self.is_real = str(self.root) == "/"
        self._root_str = str(self.root).rstrip("/")  # "" for "/": "/".join((root, "a")) == "/a"

    def __repr__(self) -> str:
        return f"Host({str(self.root)!r})"

    # -- path resolution -------------------------------------------------------------------------------
    def path(self, host_path: str) -> Path:
        """Map a host path to where it lies under the root, following links chroot-style."""
        if not host_path.startswith("/"):
            raise ValueError(f"host paths are absolute, got {host_path!r}")
        if self.is_real:
            return Path(os.path.normpath(host_path))
        return Path(self._root_str + self._resolve(host_path))

    def _resolve(self, host_path: str) -> str:
        # Plain strings and lstat, not pathlib: doctor resolves ~1,700 paths on a fixture tree (5x faster).
        parts = [p for p in host_path.split("/") if p not in ("", ".")]
        parts.reverse()  # pop() from the end: the next component
        resolved: list[str] = []
        follows = 0
        while parts:
            part = parts.pop()
            if part == "..":
                if resolved:
                    resolved.pop()
                continue
            candidate = "/".join((self._root_str, *resolved, part))
            if os.path.islink(candidate):
                follows += 1
                if follows > _MAX_LINK_FOLLOWS:
                    raise HostError("resolve", host_path, OSError(errno.ELOOP, os.strerror(errno.ELOOP)))
                target = os.readlink(candidate)
                if target.startswith("/"):
                    resolved = []
                parts.extend(reversed([p for p in target.split("/") if p not in ("", ".")]))
                continue
            resolved.append(part)
        return "/" + "/".join(resolved)

    def realpath(self, host_path: str) -> str:
        """The host path with every link resolved (as the host would see it)."""
        if self.is_real:
            return os.path.realpath(host_path)
        return self._resolve(host_path)

    # -- reads -----------------------------------------------------------------------------------------
    def read(self, host_path: str) -> str:
        """The file's text with one trailing newline removed; raises HostError. Kernel attributes and a fake
        tree's files are regular files: a FIFO, socket or device (planted in a ``--root`` tree) is refused before
        a read blocks on it (O_NONBLOCK open, fstat), and a file over READ_CAP is refused, never read whole."""
        try:
            fd = os.open(self.path(host_path), os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            raise HostError("read", host_path, exc) from exc
        try:
            why = not_regular(os.fstat(fd))
            if why:
                raise HostError("read", host_path, OSError(errno.EINVAL, why))
            data = fsafe.read_fd(fd, host_path, READ_CAP)
        except OSError as exc:
            raise HostError("read", host_path, exc) from exc
        finally:
            os.close(fd)
        text = data.decode("utf-8", errors="replace")
        return text[:-1] if text.endswith("\n") else text

    def read_or(self, host_path: str, default: Optional[str] = None) -> Optional[str]:
        """The file's text, or ``default`` when it is missing or unreadable (sysfs often is, by design)."""
        try:
            return self.read(host_path)
        except HostError:
            return default

    # A link loop (ELOOP) answers like a missing path, as os.path.exists does: one odd sysfs entry must not end
    # discovery.
    def exists(self, host_path: str) -> bool:
        try:
            return self.path(host_path).exists()
        except HostError:
            return False

    def is_dir(self, host_path: str) -> bool:
        try:
            return self.path(host_path).is_dir()
        except HostError:
            return False

    def listdir(self, host_path: str) -> list[str]:
        """Sorted entry names; empty when the directory is missing or unreadable."""
        try:
            return sorted(os.listdir(self.path(host_path)))
        except (OSError, HostError):
            return []

    def glob(self, host_dir: str, pattern: str) -> list[str]:
        """Host paths of the entries of ``host_dir`` whose name matches ``pattern`` (one level)."""
        base = host_dir.rstrip("/")
        return [f"{base}/{n}" for n in self.listdir(host_dir) if fnmatch.fnmatchcase(n, pattern)]

    # -- writes ----------------------------------------------------------------------------------------
    def write(self, host_path: str, value: str) -> None:
        """Write a kernel attribute: no create, no truncate semantics beyond what the kernel does."""
        target = self.path(host_path)
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CLOEXEC | os.O_NONBLOCK)  # a planted FIFO: ENXIO, no hang
            try:
                data = value.encode()
                written = os.write(fd, data)
                if written != len(data):
                    raise OSError(errno.EIO, f"short write ({written} of {len(data)} bytes)")
                # Only fake trees hold regular files: cut the old tail after the write (not O_TRUNC before it),
                # so a crash between open and write leaves the old value, as a kernel attribute would.
                if not not_regular(os.fstat(fd)):
                    os.ftruncate(fd, written)
            finally:
                os.close(fd)
        except OSError as exc:
            raise HostError("write", host_path, exc, value) from exc

    def write_file_atomic(
        self,
        host_path: str,
        data: bytes,
        mode: int = 0o600,
        what: str = "file",
        owners: Optional[frozenset[int]] = None,
    ) -> None:
        """Replace a regular file so a crash leaves either the old or the new content, never half; through
        checked directories only (fsafe.replace_file: random O_EXCL temp name, fsync file and dir, rename)."""
        fsafe.replace_file(str(self.root), host_path, data, what, mode, owners)

    def read_file(
        self, host_path: str, what: str = "file", owners: Optional[frozenset[int]] = None, cap: int = fsafe.MAX_READ
    ) -> bytes:
        """A file root acts on (config, journal, state): reached through checked dirs, opened O_NOFOLLOW, owner
        and mode checked on the fd, at most ``cap`` bytes. FileNotFoundError-backed HostError when missing."""
        return fsafe.read_file(str(self.root), host_path, what, owners, cap)

    def open_dir(
        self,
        host_path: str,
        what: str = "directory",
        owners: Optional[frozenset[int]] = None,
        create: Optional[int] = None,
    ) -> int:
        """An fd of a checked directory (the caller closes it); see fsafe.open_dir."""
        return fsafe.open_dir(str(self.root), host_path, what, owners, create)

    def open_lock(self, host_path: str, what: str = "lock file") -> int:
        """A lock file opened O_RDWR|O_CREAT|O_NOFOLLOW in its checked directory: a planted link is refused."""
        parent, name = fsafe.split(host_path)
        dfd = self.open_dir(parent, f"directory of the {what}", create=0o700)
        try:
            return fsafe.open_file_at(dfd, name, host_path, what, None, os.O_RDWR | os.O_CREAT, 0o600)
        finally:
            os.close(dfd)

    def ensure_dir(
        self,
        host_path: str,
        mode: int,
        uid: int = -1,
        gid: int = -1,
        what: str = "directory",
        owners: Optional[frozenset[int]] = None,
        parents: bool = True,
    ) -> None:
        """Create or fix a directory whose checked parent is root's, by fd only (fchown/fchmod after an
        O_NOFOLLOW open): a link swapped in is refused, never chmod'ed through. ``parents``: make missing
        parents (0755)."""
        parent, name = fsafe.split(host_path)
        dfd = self.open_dir(parent, f"parent of the {what}", owners, create=0o755 if parents else None)
        try:
            fsafe.ensure_dir_at(dfd, name, host_path, mode, uid, gid, what)
        finally:
            os.close(dfd)

    def stat(self, host_path: str, follow: bool = True) -> os.stat_result:
        """stat (or lstat) of a host path; HostError when it cannot be had."""
        try:
            return os.stat(self.path(host_path), follow_symlinks=follow)
        except OSError as exc:
            raise HostError("stat", host_path, exc) from exc

    def statvfs(self, host_path: str) -> os.statvfs_result:
        try:
            return os.statvfs(self.path(host_path))
        except OSError as exc:
            raise HostError("statvfs", host_path, exc) from exc

    def remove(self, host_path: str) -> None:
        try:
            self.path(host_path).unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise HostError("remove", host_path, exc) from exc
