"""host/proc.py, the one /proc reader: cross-checked against psutil and the kernel on real processes, and its one
error translation (gone → NoSuchProcess, not allowed → AccessDenied)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from vllm_nodeagent.host import Host, HostError
from vllm_nodeagent.host.parse import ParseError, json_depth, parse_proc_stat, parse_status
from vllm_nodeagent.host.proc import AccessDenied, NoSuchProcess, ProcError, Procfs

TREE = (
    "import subprocess, sys, time\n"
    "kids = [subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']) for _ in range(2)]\n"
    "time.sleep(60)\n"
)

SYSTEM_PYTHON = "/usr/bin/python3"  # nobody can run it (the test venv's may lie under /root)


def test_stat_status_and_identity_of_a_real_process_match_the_kernel_and_psutil() -> None:
    fs = Procfs()
    me = fs.stat(os.getpid())
    assert (me.ppid, me.pgid, me.sid) == (os.getppid(), os.getpgid(0), os.getsid(0))
    ticks = os.sysconf("SC_CLK_TCK")
    boot = psutil.boot_time()
    assert abs(boot + me.start_time / ticks - psutil.Process().create_time()) < 0.05
    ident = fs.identity(os.getpid())
    assert ident.uid == os.getuid() and list(ident.cmdline) == psutil.Process().cmdline()
    assert fs.status(os.getpid())["Cpus_allowed_list"]
    assert set(fs.threads(os.getpid())) == {t.id for t in psutil.Process().threads()}
    assert fs.environ(os.getpid()).get("PATH") == psutil.Process().environ().get("PATH")


def test_descendants_and_group_match_psutil() -> None:
    top = subprocess.Popen([sys.executable, "-c", TREE], start_new_session=True)
    try:
        for _ in range(200):
            kids = psutil.Process(top.pid).children(recursive=True)
            if len(kids) == 2:
                break
            time.sleep(0.02)
        fs = Procfs()
        assert fs.descendants(top.pid) == sorted(c.pid for c in kids)
        assert fs.group_members(top.pid) == sorted([top.pid, *(c.pid for c in kids)])
    finally:
        os.killpg(top.pid, 9)
        top.wait()
    for _ in range(200):
        if not Procfs().group_members(top.pid):
            break
        time.sleep(0.02)
    assert Procfs().group_members(top.pid) == []


def test_a_gone_process_is_no_such_process() -> None:
    p = subprocess.Popen(["true"])
    p.wait()
    with pytest.raises(NoSuchProcess, match=f"no such process: pid {p.pid}"):
        Procfs().stat(p.pid)
    assert not Procfs().exists(p.pid)


class DenyingHost(Host):
    def __init__(self, code: int) -> None:
        super().__init__("/")
        self.code = code

    def read(self, host_path: str) -> str:
        raise HostError("read", host_path, OSError(self.code, os.strerror(self.code)))


@pytest.mark.parametrize(
    ("code", "kind"),
    [(errno.EACCES, AccessDenied), (errno.EPERM, AccessDenied), (errno.ESRCH, NoSuchProcess), (errno.EIO, ProcError)],
)
def test_one_translation(code: int, kind: type[ProcError]) -> None:
    with pytest.raises(kind) as got:
        Procfs(DenyingHost(code)).environ(1)
    assert got.value.pid == 1


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists(SYSTEM_PYTHON), reason="root and /usr/bin/python3")
def test_another_users_environ_is_access_denied_for_real() -> None:
    """As nobody, root's /proc/1/environ: EACCES from the kernel, AccessDenied from the reader."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\nfrom vllm_nodeagent.host.proc import Procfs, AccessDenied\n"
        "try:\n    Procfs().environ(1)\nexcept AccessDenied as e:\n    print('denied', e)\n"
    )
    base = tempfile.mkdtemp(prefix="vna-proc-")
    try:
        os.chmod(base, 0o755)  # noqa: S103 - nobody must read the copy of the package
        shutil.copytree(Path(__file__).resolve().parent.parent / "vllm_nodeagent", f"{base}/vllm_nodeagent")
        subprocess.run(["chmod", "-R", "a+rX", base], check=True)
        out = subprocess.run(
            [SYSTEM_PYTHON, "-S", "-c", code, base], user="nobody", capture_output=True, text=True, cwd="/"
        )
    finally:
        shutil.rmtree(base)
    assert out.stdout.strip() == "denied access denied: /proc/1/environ", out


def test_parsers() -> None:
    f = parse_proc_stat("4300 (VLLM::Worker) TP0)) S 4242 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 777 0")
    assert (f.comm, f.state, f.ppid, f.pgid, f.start_time) == ("VLLM::Worker) TP0)", "S", 4242, 4242, 777)
    with pytest.raises(ParseError):
        parse_proc_stat("4300 VLLM S 1")
    assert parse_status("Name:\tx\nUid:\t0\t0\t0\t0\nName:\ty\n") == {"Name": "x", "Uid": "0\t0\t0\t0"}
    assert json_depth('{"a": "[[[[", "b": [1, [2]]}') == 3
    assert json_depth('"\\"[[["') == 0
