"""The ground floor's file safety (issue 22), proven against a real unprivileged user (``nobody``), real symbolic
links and real races: a process running as nobody plants names and links while root writes, many times.

Root only (the hostile party must be another uid); skipped otherwise.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vllm_nodeagent.host import Host, HostError
from vllm_nodeagent.host.accounts import Accounts
from vllm_nodeagent.host.fsafe import lock_holder, open_regular
from vllm_nodeagent.host.parse import parse_group, parse_passwd, parse_proc_locks
from vllm_nodeagent.host.trust import Refused, not_regular

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the hostile party is another uid")
SECRET = b"root-only secret\n"


@pytest.fixture
def base() -> Iterator[Path]:
    """A directory nobody can traverse (0711) but not write: the tests make hostile subdirectories in it."""
    d = Path(tempfile.mkdtemp(prefix="vna-fsafe-", dir="/tmp"))
    d.chmod(0o711)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def secret(base: Path) -> Path:
    """A root-only 0600 file outside every directory the agent writes: the target of every planted link."""
    p = base / "secret"
    p.write_bytes(SECRET)
    p.chmod(0o600)
    return p


def nobody_dir(base: Path, name: str) -> Path:
    d = base / name
    d.mkdir(mode=0o755)
    os.chown(d, NOBODY, NOBODY)
    return d


# A planter running as nobody: every name it can think of, and every new name it sees, becomes a link to the
# secret, for as long as the test runs. Predictable names are the old writers' (prometheus_client's
# <file>.<pid>.<tid>, ".<name>.tmp-<pid>", "<name>.tmp"); seen names are swapped for links as they appear.
PLANTER = r"""
import os, sys, time
d, target, name, stop = sys.argv[1], sys.argv[2], sys.argv[3], time.time() + float(sys.argv[4])
guesses = [f"{name}.tmp", f".{name}.tmp-{sys.argv[5]}", f"{name}.{sys.argv[5]}.{sys.argv[6]}", name]
planted = 0
while time.time() < stop:
    for n in guesses + [e for e in os.listdir(d) if not os.path.islink(os.path.join(d, e))]:
        p = os.path.join(d, n)
        try:
            if os.path.lexists(p) and not os.path.islink(p):
                os.rename(p, p + ".moved")  # nobody owns the dir: it may move root's temp file away
            os.symlink(target, p)
            planted += 1
        except OSError:
            pass
print(planted)
"""


def start_planter(d: Path, target: Path, name: str, seconds: float) -> subprocess.Popen[str]:
    import threading

    return subprocess.Popen(
        ["/usr/bin/python3", "-c", PLANTER, str(d),
         str(target), name, str(seconds), str(os.getpid()), str(threading.get_ident())],
        user=NOBODY, group=NOBODY, extra_groups=[], stdout=subprocess.PIPE, text=True, cwd="/",
    )  # fmt: skip


@as_root
def test_a_directory_nobody_owns_is_refused_with_one_line_and_the_planted_links_never_written(
    base: Path, secret: Path
) -> None:
    d = nobody_dir(base, "textfile")
    host = Host("/")
    before = secret.stat()
    planter = start_planter(d, secret, "vllm.prom", 3.0)
    refusals = set()
    deadline = time.monotonic() + 2.5
    n = 0
    while time.monotonic() < deadline or n < 200:
        with pytest.raises(Refused) as exc:
            host.write_file_atomic(f"{d}/vllm.prom", b"metric 1\n", mode=0o644, what="metrics textfile")
        refusals.add(str(exc.value))
        n += 1
    planter.wait(10)
    assert secret.read_bytes() == SECRET and secret.stat().st_mtime_ns == before.st_mtime_ns
    (line,) = refusals
    assert "\n" not in line and str(d) in line and "uid 65534 (nobody)" in line and "0755" in line


@as_root
def test_even_in_a_hostile_directory_root_writes_only_its_own_o_excl_temp_file(base: Path, secret: Path) -> None:
    """Allowed explicitly (the seam's ``owners``), a dir nobody writes is still never a way to the secret: the
    temp name is random and O_EXCL|O_NOFOLLOW, the content goes to that fd, rename replaces a link itself."""
    d = nobody_dir(base, "hostile")
    host = Host("/")
    planter = start_planter(d, secret, "state.json", 3.0)
    deadline = time.monotonic() + 2.5
    writes = 0
    while time.monotonic() < deadline or writes < 200:
        # The planter may move the temp file away before the rename: a failed write, never a redirected one.
        with contextlib.suppress(HostError):
            host.write_file_atomic(f"{d}/state.json", b"{}\n", owners=frozenset({NOBODY}))
        writes += 1
    out, _ = planter.communicate(timeout=10)
    assert int(out) > 0  # the planter really ran and planted
    assert secret.read_bytes() == SECRET
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and secret.stat().st_uid == 0


@as_root
def test_a_symlinked_lock_file_is_refused_and_its_target_untouched(base: Path, secret: Path) -> None:
    state = base / "state"
    state.mkdir(mode=0o700)
    (state / "lock").symlink_to(secret)
    with pytest.raises(Refused, match="symbolic link"):
        Host("/").open_lock(f"{state}/lock")
    assert secret.read_bytes() == SECRET


@as_root
@pytest.mark.parametrize("shape", ["world-writable 1777", "owned by the vLLM user"])
def test_a_cache_base_others_can_write_is_refused(base: Path, shape: str) -> None:
    cache = base / "cache"
    cache.mkdir()
    if shape.startswith("world"):
        cache.chmod(0o1777)
    else:
        os.chown(cache, NOBODY, NOBODY)
    with pytest.raises(Refused) as exc:
        Host("/").ensure_dir(f"{cache}/nobody", 0o700, NOBODY, NOBODY, what="vLLM cache dir")
    line = str(exc.value)
    assert "\n" not in line and str(cache) in line and ("1777" in line or "nobody" in line)
    assert not (cache / "nobody").exists()


SWAPPER = r"""
import os, sys, time
leaf, target, stop = sys.argv[1], sys.argv[2], time.time() + float(sys.argv[3])
while time.time() < stop:
    try:
        if os.path.islink(leaf):
            os.unlink(leaf)
            os.mkdir(leaf)
        else:
            os.rmdir(leaf)
            os.symlink(target, leaf)
    except OSError:
        pass
"""


@as_root
def test_a_leaf_swapped_for_a_link_is_never_chmoded_through(base: Path, secret: Path) -> None:
    parent = nobody_dir(base, "cachebase")  # allowed explicitly below so the race can happen at all
    leaf = parent / "nobody"
    leaf.mkdir()
    os.chown(leaf, NOBODY, NOBODY)
    swapper = subprocess.Popen(["/usr/bin/python3", "-c", SWAPPER, str(leaf), str(secret), "2.5"],
                               user=NOBODY, group=NOBODY, extra_groups=[], cwd="/")  # fmt: skip
    host = Host("/")
    outcomes = set()
    deadline = time.monotonic() + 2.0
    n = 0
    while time.monotonic() < deadline or n < 300:
        try:
            host.ensure_dir(str(leaf), 0o700, NOBODY, NOBODY, owners=frozenset({NOBODY}))
            outcomes.add("fixed")
        except HostError as exc:
            outcomes.add(type(exc).__name__)
        n += 1
    swapper.wait(10)
    st = secret.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600)  # never chowned or chmoded through the link
    assert secret.read_bytes() == SECRET
    assert "Refused" in outcomes or "fixed" in outcomes


def test_reads_are_size_capped_and_refuse_a_fifo_and_a_link(tmp_path: Path) -> None:
    host = Host(tmp_path)
    (tmp_path / "big").write_bytes(b"x" * 5000)
    assert host.read_file("/big", cap=5000) == b"x" * 5000
    with pytest.raises(Refused, match="larger than 4999 bytes"):
        host.read_file("/big", cap=4999)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(Refused, match="not a regular file"):
        host.read_file("/fifo")  # O_NONBLOCK: refused, not a hang
    (tmp_path / "link").symlink_to(tmp_path / "big")
    with pytest.raises(Refused, match="symbolic link"):
        host.read_file("/link")
    with pytest.raises(HostError) as missing:
        host.read_file("/nothing")
    assert missing.value.errno == 2


def test_a_group_writable_file_or_dir_is_refused(tmp_path: Path) -> None:
    host = Host(tmp_path)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("x")
    (tmp_path / "d" / "f").chmod(0o620)
    with pytest.raises(Refused, match=r"group- or world-writable .*mode 0620"):
        host.read_file("/d/f")
    (tmp_path / "d" / "f").chmod(0o600)
    (tmp_path / "d").chmod(0o775)
    with pytest.raises(Refused, match=r"mode 0775"):
        host.write_file_atomic("/d/g", b"x")
    assert host.read_file("/d/f") == b"x"  # a read checks the file itself; its dir only as a way through


def test_links_on_the_way_are_followed_chroot_style_and_writes_land_inside(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "var").symlink_to("/real")  # absolute: restarts at the root, not the machine's /
    host = Host(tmp_path)
    host.write_file_atomic("/var/state/j", b"data", mode=0o640)
    assert (tmp_path / "real" / "state" / "j").read_bytes() == b"data"
    assert stat.S_IMODE((tmp_path / "real" / "state" / "j").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "real" / "state").stat().st_mode) == 0o700
    assert sorted(os.listdir(tmp_path / "real" / "state")) == ["j"]  # no temp file left behind
    assert host.read_file("/var/../var/state/j") == b"data"


def test_the_replace_loops_short_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data[:3])))
    Host(tmp_path).write_file_atomic("/f", b"0123456789")
    monkeypatch.undo()
    assert (tmp_path / "f").read_bytes() == b"0123456789"


def test_open_regular_refuses_a_final_link_and_a_fifo(tmp_path: Path) -> None:
    (tmp_path / "w").write_bytes(b"weights")
    fd = open_regular(str(tmp_path / "w"))
    os.close(fd)
    (tmp_path / "l").symlink_to(tmp_path / "w")
    with pytest.raises(OSError):
        open_regular(str(tmp_path / "l"))
    os.mkfifo(tmp_path / "p")
    with pytest.raises(OSError, match="not a regular file"):
        open_regular(str(tmp_path / "p"))


def test_lock_holder_names_the_process_the_kernel_says_holds_the_flock(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    lock.write_text("1234567\n")  # a finished run's pid, left in the file
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl,sys,time; f=open(sys.argv[1]); fcntl.flock(f, fcntl.LOCK_EX); "
         "print('held', flush=True); time.sleep(30)", str(lock)], stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        fd = os.open(lock, os.O_RDONLY)
        try:
            assert lock_holder(fd) == holder.pid
        finally:
            os.close(fd)
    finally:
        holder.kill()
        holder.wait()


def test_the_account_parsers_and_the_root_s_own_accounts(tmp_path: Path) -> None:
    passwd = "root:x:0:0:root:/root:/bin/bash\n+nis::::::\nbad:line\nvllm:x:990:985::/var/lib/vllm:/usr/sbin/nologin\n"
    assert parse_passwd(passwd) == [("root", 0, 0, "/root"), ("vllm", 990, 985, "/var/lib/vllm")]
    assert parse_group("vllm:x:985:\nvideo:x:44:vllm,bob\nbad\n") == [("vllm", 985, []), ("video", 44, ["vllm", "bob"])]
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text(passwd)
    (tmp_path / "etc" / "group").write_text("vllm:x:985:\nvideo:x:44:vllm,bob\n")
    accounts = Accounts.of(Host(tmp_path))
    vllm = accounts.user("vllm")
    assert vllm is not None and vllm.uid == 990 and accounts.group_ids(vllm) == [44, 985]
    assert accounts.user("nobody") is None  # the machine's own /etc/passwd is not read under --root
    (tmp_path / "etc" / "passwd").chmod(0o666)
    with pytest.raises(Refused, match="passwd"):
        Accounts.of(Host(tmp_path)).users()


def test_proc_locks_parser() -> None:
    text = "1: FLOCK  ADVISORY  WRITE 4242 00:2c:1234 0 EOF\n1: -> FLOCK  ADVISORY  WRITE 99 00:2c:1234 0 EOF\n"
    text += "2: POSIX  ADVISORY  READ 7 fd:01:99 0 EOF\n"
    assert parse_proc_locks(text) == [("FLOCK", 4242, (0, 0x2C, 1234)), ("POSIX", 7, (0xFD, 1, 99))]


def test_the_one_regular_file_check_names_what_it_is_instead(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    os.mkfifo(tmp_path / "p")
    os.symlink("f", tmp_path / "l")
    assert not_regular(os.stat(tmp_path / "f")) == ""
    assert not_regular(os.stat(tmp_path / "p")) == "not a regular file (a FIFO)"
    assert not_regular(os.stat(tmp_path)) == "not a regular file (a directory)"
    assert not_regular(os.lstat(tmp_path / "l")) == "not a regular file (a symbolic link)"
    assert not_regular(os.stat("/dev/null")) == "not a regular file (a character device)"
