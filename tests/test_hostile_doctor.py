"""Red team, doctor and apply on a hostile ``--root`` tree: a FIFO, a 3 GiB file, binary garbage, a link loop or a
directory where a kernel file belongs. Every command ends with its documented exit and one line per fault, never a
hang or a traceback. Before the fix a FIFO at /proc/sys/net/core/rmem_max hung doctor for ever (Host.read opened
it blocking) and a 3 GiB file there was read whole into memory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fakehost import two_socket_8gpu

from vllm_nodeagent.host import Host, HostError

CLI = str(Path(sys.executable).parent / "vllm-nodeagent")
SAMPLE = Path(__file__).resolve().parent.parent / "etc" / "config.toml"
TARGETS = ["proc/sys/net/core/rmem_max", "proc/meminfo", "sys/kernel/mm/transparent_hugepage/enabled"]


def plant(path: Path, kind: str) -> None:
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "giant":
        with open(path, "wb") as fh:
            fh.truncate(3 << 30)  # sparse: no disk, but 3 GiB to read
    elif kind == "garbage":
        path.write_bytes(bytes(range(256)) * 20)
    elif kind == "loop":
        path.symlink_to(path.name)
    elif kind == "dir":
        path.mkdir()


CASES = [
    *((["doctor"], kind) for kind in ("fifo", "giant", "loop", "dir", "garbage")),
    (["apply"], "fifo"),
    (["apply"], "giant"),
    (["apply", "--dry-run"], "fifo"),
]


@pytest.mark.parametrize(("command", "kind"), CASES, ids=[f"{' '.join(c)}-{k}" for c, k in CASES])
def test_hostile_kernel_files_end_with_one_line(tmp_path: Path, kind: str, command: list[str]) -> None:
    if os.geteuid() != 0 and command == ["apply"]:
        pytest.skip("apply needs root")
    root = tmp_path / "root"
    two_socket_8gpu(root)
    (root / "etc/vllm-nodeagent").mkdir(parents=True, exist_ok=True)
    shutil.copy(SAMPLE, root / "etc/vllm-nodeagent/config.toml")
    (root / "var/lib/vllm-nodeagent").mkdir(parents=True, exist_ok=True, mode=0o755)
    for rel in TARGETS:
        if (root / rel).exists():
            plant(root / rel, kind)
    try:  # a guard against a hang, not a speed claim: the run takes well under a second
        res = subprocess.run(
            [CLI, "--root", str(root), *command], capture_output=True, text=True, timeout=120,
            env={**os.environ, "VLLM_NODEAGENT_DEBUG": ""},
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail(f"{command} hung on a {kind} in the tree")
    out = res.stdout + res.stderr
    assert "Traceback" not in out and res.returncode in (0, 1, 2, 3, 5), (res.returncode, out[-2000:])
    assert len(out) < 400_000  # nothing of a giant file echoed
    assert "\x1b" not in out and "\x00" not in out  # garbage bytes shown escaped: no ESC sequence reaches a terminal


def test_host_read_refuses_what_is_no_kernel_file(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    with open(tmp_path / "giant", "wb") as fh:
        fh.truncate(3 << 30)
    host = Host(tmp_path)
    with pytest.raises(HostError, match="not a regular file"):
        host.read("/fifo")
    with pytest.raises(HostError, match="larger than"):
        host.read("/giant")
    with pytest.raises(HostError):
        host.write("/fifo", "1")  # no reader: ENXIO at once, not a wait for one
    assert host.read_or("/fifo", "x") == "x"


def test_printable_escapes_controls_and_keeps_colour() -> None:
    from vllm_nodeagent.host.tty import printable

    assert printable("a\x1b[2Jb\x1b]0;title\x07\r\u2028\tc\n") == "a\\x1b[2Jb\\x1b]0;title\\x07\\r\\u2028\tc\n"
    assert printable("\x1b[1;31mFAIL\x1b[0m") == "\x1b[1;31mFAIL\x1b[0m"
