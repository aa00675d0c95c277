"""Red team, prewarm: root warms (and with --lock, mlocks) files in a model directory the vLLM user owns. Between
the scan and the read that user swaps a directory on the way for a link: to a FIFO (a stand-in for a device it
cannot create but can point at: opening /dev/watchdog arms it) or to a far larger file (mlock sized by the scan,
locking another). Before the fix root opened the FIFO (inotify saw IN_OPEN) and read or locked whatever the link
named (the larger file was caught after the read by the residency check); now nothing is opened that is not the
inode the scan found, and the file is one error line."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import pytest
from hostile_user import as_user, attacker_user

from vllm_nodeagent.host import Host, paths
from vllm_nodeagent.prewarm.warm import prewarm

IN_OPEN = 0x20


def inotify_opens(path: Path) -> tuple[int, ctypes.CDLL]:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    assert fd >= 0 and libc.inotify_add_watch(fd, str(path).encode(), IN_OPEN) >= 0
    return fd, libc


def opened(fd: int) -> bool:
    try:
        return bool(os.read(fd, 4096))
    except BlockingIOError:
        return False


@pytest.mark.parametrize("swap_to", ["fifo", "larger"])
def test_a_directory_swapped_for_a_link_after_the_scan_is_never_followed(tmp_path: Path, swap_to: str) -> None:
    with attacker_user() as atk:
        home = Path(atk.pw_dir)
        model, decoy = home / "model", home / "decoy"
        as_user(
            atk, ["sh", "-c", f"mkdir -p {model}/sub {decoy} && head -c 65536 /dev/urandom > {model}/sub/w.safetensors"]
        )
        if swap_to == "fifo":
            as_user(atk, ["mkfifo", str(decoy / "w.safetensors")])
        else:
            as_user(atk, ["truncate", "-s", "1G", str(decoy / "w.safetensors")])
        fd = os.open(model / "sub" / "w.safetensors", os.O_RDONLY)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # not resident: prewarm has it to read
        os.close(fd)
        watch, _libc = inotify_opens(decoy / "w.safetensors")
        opened(watch)  # drain the test's own setup

        def swap(path: str) -> None:  # the attacker's move, at the floor's step boundary (scan done, read next)
            if path.endswith("w.safetensors"):
                as_user(atk, ["sh", "-c", f"mv {model}/sub {model}/sub.old && ln -s {decoy} {model}/sub"])

        result = None
        try:
            result = prewarm([str(model)], host=Host("/"), budget_bytes=None, lock=True, _file_hook=swap)
            assert swap_to != "fifo" or not opened(watch), "root opened the FIFO the link named"
            assert result.read_bytes <= 65536 and (result.locked is None or result.locked.bytes <= 65536)
            why = ("not a regular file",) if swap_to == "fifo" else ("replaced since it was found", "vanished")
            assert any(w in e for e in result.errors for w in why), result.errors
        finally:
            os.close(watch)
            if result is not None and result.locked is not None:
                result.locked.release()


def test_open_regular_opens_no_fifo(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    watch, _ = inotify_opens(tmp_path / "fifo")
    try:
        with pytest.raises(OSError, match="not a regular file"):
            paths.open_regular(str(tmp_path / "fifo"))
        assert not opened(watch)
        (tmp_path / "f").write_bytes(b"x")
        st = os.stat(tmp_path / "f")
        os.close(paths.open_regular(str(tmp_path / "f"), (st.st_dev, st.st_ino)))
        with pytest.raises(OSError, match="replaced"):
            paths.open_regular(str(tmp_path / "f"), (st.st_dev, st.st_ino + 1))
    finally:
        os.close(watch)
