"""Safe file primitives on directory fds: what every file the agent reads for trust or writes stands on.

Root must never follow a path an unprivileged user can change. So a path is walked one component at a time with
``openat(dir_fd, name, O_NOFOLLOW | O_DIRECTORY)``, and each directory is checked on its fd (``fstat``): owned by
root (or by an owner the caller names: the running uid, the vLLM user) and not writable by group or others. A
sticky directory (``/tmp``) may be passed through, never used. A symbolic link met on the way lies in a directory
already checked, so nobody else can have put it there; it is followed chroot-style (never above the root). The
final file is opened ``O_NOFOLLOW`` in the last checked directory fd and checked on its own fd; reads are
size-capped. Writes go to a random ``O_CREAT | O_EXCL | O_NOFOLLOW`` name in that fd, are fsynced, renamed over
the target through the same fd and the directory is fsynced: a planted name or link is never opened.
What counts as trusted (owners, modes, regular files) and how a refusal reads is ``host/trust.py``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from typing import Optional

from vllm_nodeagent.host.errors import HostError
from vllm_nodeagent.host.trust import Refused, not_regular, refuse_unsafe, trusted

MAX_READ = 1 << 20  # what the agent reads for trust (config, journal, plan, pid, caches) is KiB, never MiB
_MAX_LINK_FOLLOWS = 40
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _parts(host_path: str) -> list[str]:
    return [p for p in host_path.split("/") if p not in ("", ".")]


def open_dir(
    root: str,
    host_path: str,
    what: str = "directory",
    owners: Optional[frozenset[int]] = None,
    create: Optional[int] = None,
    final_check: bool = True,
    through_others: bool = False,
) -> int:
    """An fd of ``host_path`` (under ``root``) reached through checked directories only; the caller closes it.

    ``create``: the mode of missing components, made with mkdirat in their checked parent. ``final_check``
    False: the last directory may be writable by others too (a read of a file that is itself checked).
    ``through_others``: the way may pass directories another user owns (Debian's /var/lib/prometheus belongs to
    ``prometheus``); then no link is followed on the way at all (one there could be that user's), and the last
    directory is still checked: its owner can only have swapped in a directory of its own, which is refused.
    """
    allowed = trusted(owners)
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # the operator's --root itself
    except OSError as exc:
        raise HostError("open", host_path, exc) from exc
    stack = [fd]
    shown: list[str] = []
    todo = list(reversed(_parts(host_path)))
    follows = 0
    try:
        if not (through_others and todo):
            refuse_unsafe(root, os.fstat(fd), what, allowed, passing=bool(todo))
        while todo:
            part = todo.pop()
            if part == "..":
                if len(stack) > 1:
                    os.close(stack.pop())
                    shown.pop()
                continue
            here = "/" + "/".join([*shown, part])
            try:
                nfd = os.open(part, _DIR_FLAGS, dir_fd=stack[-1])
            except FileNotFoundError:
                if create is None:
                    raise
                made = False
                with contextlib.suppress(FileExistsError):  # made meanwhile: checked below like any other
                    os.mkdir(part, create, dir_fd=stack[-1])
                    made = True
                nfd = os.open(part, _DIR_FLAGS, dir_fd=stack[-1])
                if made:
                    os.fchmod(nfd, create)  # the mode asked for, not the umask's idea of it
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                try:
                    target = os.readlink(part, dir_fd=stack[-1])
                except OSError:
                    raise exc from None  # a non-directory, not a link
                if through_others:
                    raise Refused(
                        "open",
                        here,
                        f"a symbolic link on the way to the {what}: {here}",
                        f"replace the link at {here} by a directory",
                    ) from None
                follows += 1
                if follows > _MAX_LINK_FOLLOWS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP)) from None
                if target.startswith("/"):
                    while len(stack) > 1:
                        os.close(stack.pop())
                    shown.clear()
                todo.extend(reversed(_parts(target)))
                continue
            stack.append(nfd)
            shown.append(part)
            last = not todo
            if (not last and not through_others) or (last and final_check):
                refuse_unsafe(here, os.fstat(nfd), what, allowed, passing=not last)
    except OSError as exc:
        for f in stack:
            os.close(f)
        raise HostError("open", host_path, exc) from exc
    except BaseException:
        for f in stack:
            os.close(f)
        raise
    for f in stack[:-1]:
        os.close(f)
    return stack[-1]


def split(host_path: str) -> tuple[str, str]:
    """(parent, name) of a file's host path; the name is one plain component."""
    parent, _, name = host_path.rstrip("/").rpartition("/")
    if not name or name in (".", ".."):
        raise ValueError(f"not a file path: {host_path!r}")
    return parent or "/", name


def open_file_at(
    dir_fd: int,
    name: str,
    shown: str,
    what: str,
    owners: Optional[frozenset[int]],
    flags: int = os.O_RDONLY,
    mode: int = 0o600,
) -> int:
    """``name`` in ``dir_fd`` opened O_NOFOLLOW, a regular file with a trusted owner, not writable by others."""
    try:
        fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Refused("open", shown, f"a {what} that is a symbolic link: {shown}", f"remove {shown}") from None
        raise HostError("open", shown, exc) from exc
    try:
        st = os.fstat(fd)
        why = not_regular(st)
        if why:
            raise Refused("open", shown, f"a {what} that is {why}: {shown}", f"remove {shown}")
        refuse_unsafe(shown, st, what, trusted(owners))
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_upto(fd: int, cap: int, chunk_size: int = 1 << 16) -> bytes:
    """At most ``cap`` + 1 bytes of an open file: a result longer than ``cap`` means the file is too large."""
    chunks: list[bytes] = []
    total = 0
    while total <= cap:
        chunk = os.read(fd, min(chunk_size, cap + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def read_fd(fd: int, shown: str, cap: int) -> bytes:
    """At most ``cap`` bytes of an open file; more is refused (a file this large is not one the agent wrote)."""
    try:
        data = read_upto(fd, cap)
    except OSError as exc:
        raise HostError("read", shown, exc) from exc
    if len(data) > cap:
        raise Refused(
            "read", shown, f"{shown}: larger than {cap} bytes, not a file this agent wrote", f"move {shown} aside"
        )
    return data


def read_file(
    root: str,
    host_path: str,
    what: str = "file",
    owners: Optional[frozenset[int]] = None,
    cap: int = MAX_READ,
    follow: bool = False,
) -> bytes:
    """A checked file's bytes (at most ``cap``). ``follow``: a last component that is a link (a config managed
    as a symlink) is followed, the link having been read from a checked directory and its target walked anew."""
    for _ in range(_MAX_LINK_FOLLOWS):
        parent, name = split(host_path)
        dfd = open_dir(root, parent, f"directory of the {what}", owners, final_check=False)
        try:
            try:
                fd = open_file_at(dfd, name, host_path, what, owners)
            except Refused:
                if not follow or not _is_link_at(dfd, name):
                    raise
                target = os.readlink(name, dir_fd=dfd)
                host_path = target if target.startswith("/") else f"{parent.rstrip('/')}/{target}"
                continue
        finally:
            os.close(dfd)
        try:
            return read_fd(fd, host_path, cap)
        finally:
            os.close(fd)
    raise HostError("open", host_path, OSError(errno.ELOOP, os.strerror(errno.ELOOP)))


def _is_link_at(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def write_all(fd: int, data: bytes) -> None:
    """Write every byte or raise: a nearly full filesystem takes part of a write and returns the count."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[n:]


def replace_at(
    dir_fd: int, name: str, data: bytes, shown: str, mode: int = 0o600, uid: int = -1, gid: int = -1
) -> None:
    """Atomically replace ``name`` in the checked ``dir_fd``: a crash leaves the old or the new content."""
    tmp = ""
    try:
        for _ in range(16):
            candidate = f".{name}.{secrets.token_hex(8)}.tmp"
            try:
                fd = os.open(
                    candidate,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    mode & 0o600,
                    dir_fd=dir_fd,
                )  # private until written: no reader sees a torn file
            except FileExistsError:
                continue  # planted, or a one-in-2^64 collision: another name
            tmp = candidate
            break
        else:
            raise OSError(errno.EEXIST, "no free temporary name (someone plants them)")
        try:
            write_all(fd, data)
            if uid != -1 or gid != -1:
                os.fchown(fd, uid, gid)
            os.fchmod(fd, mode)  # not the umask's choice: node_exporter must read a 0644 textfile
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        tmp = ""
        os.fsync(dir_fd)
    except OSError as exc:
        if tmp:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
        raise HostError("write", shown, exc) from exc


def replace_file(
    root: str,
    host_path: str,
    data: bytes,
    what: str = "file",
    mode: int = 0o600,
    owners: Optional[frozenset[int]] = None,
    create_dirs: Optional[int] = 0o700,
    through_others: bool = False,
) -> None:
    """The one atomic writer: every file the agent writes (journal, textfile, pid, plan, caches) goes here.
    ``through_others``: see open_dir (the metrics textfile, below a directory node_exporter's user owns)."""
    parent, name = split(host_path)
    dfd = open_dir(root, parent, f"directory of the {what}", owners, create_dirs, True, through_others)
    try:
        replace_at(dfd, name, data, host_path, mode)
    finally:
        os.close(dfd)


def open_regular(path: str, expect: Optional[tuple[int, int]] = None) -> int:
    """A read-only fd of a regular file (model weights, libraries to warm); OSError otherwise.

    The last component is never a link (O_NOFOLLOW), and a FIFO or device is never opened at all: the file is
    first taken ``O_PATH`` (which opens nothing: opening ``/dev/watchdog`` arms it, a tape rewinds, a FIFO wakes
    its writer), checked on that fd, then opened through ``/proc/self/fd``, the same inode. ``expect``: the
    ``(st_dev, st_ino)`` a scan saw; a directory on the way swapped for a link since (to a larger file, another
    user's) is refused, so a warm-up or mlock sized by the scan never takes another file."""
    pfd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(pfd)
        why = not_regular(st)
        if why:
            raise OSError(errno.EINVAL, f"{path}: {why}")
        if expect is not None and (st.st_dev, st.st_ino) != expect:
            raise OSError(errno.ESTALE, f"{path}: replaced since it was found (a directory on the way changed?)")
        try:
            fd = os.open(f"/proc/self/fd/{pfd}", os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:  # no /proc: by name again, and the same inode or nothing
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
            again = os.fstat(fd)
            if (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino):
                os.close(fd)
                raise OSError(errno.ESTALE, f"{path}: replaced while it was opened") from None
    finally:
        os.close(pfd)
    return fd


def open_subdir(dir_fd: int, name: str, shown: str, what: str, fix: str) -> int:
    """``name`` in ``dir_fd`` as a directory fd, never through a link: a link or a non-directory is Refused."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise Refused("open", shown, f"a {what} that is a symbolic link or not a directory: {shown}", fix) from None
        raise HostError("open", shown, exc) from exc


def ensure_dir_at(
    dir_fd: int, name: str, shown: str, mode: int, uid: int = -1, gid: int = -1, what: str = "directory"
) -> None:
    """Create ``name`` in the checked ``dir_fd`` if missing, then set owner and mode on its own fd."""
    try:
        os.mkdir(name, mode, dir_fd=dir_fd)
    except FileExistsError:
        pass
    except OSError as exc:
        raise HostError("mkdir", shown, exc) from exc
    fd = open_subdir(dir_fd, name, shown, what, f"remove {shown} so the agent can create it")
    try:
        st = os.fstat(fd)
        if (uid != -1 or gid != -1) and (st.st_uid, st.st_gid) != (uid, gid):
            os.fchown(fd, uid, gid)
        if stat.S_IMODE(st.st_mode) != mode:
            os.fchmod(fd, mode)
    except OSError as exc:
        raise HostError("chmod", shown, exc) from exc
    finally:
        os.close(fd)


def lock_holder(fd: int) -> Optional[int]:
    """The pid the kernel names as holding a flock on ``fd``'s file (/proc/locks), or None: the truth, where a
    pid written into the lock file may be a finished run's."""
    from vllm_nodeagent.host.parse import parse_proc_locks

    try:
        st = os.fstat(fd)
        with open("/proc/locks", encoding="ascii", errors="replace") as fh:  # the kernel's, even under --root
            text = fh.read(MAX_READ)
    except OSError:
        return None
    key = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    pids = [pid for kind, pid, dev in parse_proc_locks(text) if kind == "FLOCK" and dev == key and pid > 0]
    return pids[0] if pids else None


def own_dir(path: str, uid: int, gid: int, mode: int = 0o700) -> None:
    """Hand a directory root just made (a mkdtemp scratch dir) to ``uid``: by fd, the last component O_NOFOLLOW."""
    try:
        fd = os.open(path, _DIR_FLAGS)
    except OSError as exc:
        raise HostError("open", path, exc) from exc
    try:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
    except OSError as exc:
        raise HostError("chown", path, exc) from exc
    finally:
        os.close(fd)
