"""Doctor's fix hints are commands a person can paste (issue 26.2): every check's hint line passes ``bash -n``; every
fix command keeps --root and --config and, run on the fake 8-GPU tree, fixes what it names; DESIRED is what apply
would write (a triple's field-wise floor), not the config's text."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fakehost import FakeHost, SysfsHost

from vllm_nodeagent import cli
from vllm_nodeagent.context import self_argv

REPO = Path(__file__).resolve().parent.parent
SAMPLE = (REPO / "etc/config.toml").read_text()
EXTRA = '"vm.swappiness" = { value = 10, mode = "exact" }\n"net.core.somaxconn" = 4096\n'


PREFIX = [sys.executable, "-m", "vllm_nodeagent.cli"]  # the binary as invoked in-process (sys.argv[0] is pytest's)


def agent(root: Path, config: Path, *args: str) -> tuple[int, str]:
    """The CLI in-process over a tree whose sysfs answers like the kernel's (bracket lists): what a paste runs."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli.main(["--root", str(root), "--config", str(config), *args], host_cls=SysfsHost)
    return rc, out.getvalue()


def report(root: Path, config: Path) -> dict[str, dict[str, Any]]:
    rc, out = agent(root, config, "doctor", "--json")
    assert rc in (0, 1), out
    return {c["id"]: c for c in json.loads(out)["checks"]}


@pytest.fixture
def tree(hgx: FakeHost) -> tuple[Path, Path]:
    hgx.sysctl("vm.swappiness", "60")
    hgx.sysctl("net.core.somaxconn", "1024")
    hgx.write("/sys/devices/pci0000:00/0000:5e:00.0/block/nvme0n1/queue/scheduler", "none [mq-deadline] kyber bfq")
    config = hgx.root.parent / "my config.toml"  # a space: the hint must quote it
    config.write_text(SAMPLE.replace("[sysctl]\n", "[sysctl]\n" + EXTRA))
    config.chmod(0o600)
    return hgx.root, config


def test_every_hint_line_is_valid_shell(tree: tuple[Path, Path]) -> None:
    root, config = tree
    checks = report(root, config)
    table = agent(root, config, "doctor")[1]
    assert len(checks) > 20
    for c in checks.values():
        if c["hint"]:
            res = subprocess.run(["bash", "-n", "-c", c["hint"]], capture_output=True, text=True)
            assert res.returncode == 0, (c["id"], c["hint"], res.stderr)
            assert "\n" not in c["hint"] and c["hint"] in table
        if c["status"] in ("fail", "warn"):
            assert c["fix"] is not None and (c["fix"]["command"] or c["fix"]["note"]), c


def test_every_fix_command_fixes_what_it_names_on_the_tree(tree: tuple[Path, Path]) -> None:
    root, config = tree
    before = report(root, config)
    fixable = {i: c for i, c in before.items() if c["fix"] and c["fix"]["command"]}
    # What the sample config manages on this tree and does not hold.
    assert {"sysctl.vm.max_map_count", "sysctl.net.ipv4.tcp_rmem", "sysctl.vm.swappiness", "thp.enabled"} <= set(
        fixable
    )
    assert any(i.startswith("block.") for i in fixable) and any(i.startswith("cpu.") for i in fixable)
    # Pasted for real, as a new process (plain files here: a sysctl behaves the same).
    cmd = before["sysctl.vm.max_map_count"]["hint"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    subprocess.run(["bash", "-c", f"set -e; {cmd}"], check=True, env=env, capture_output=True, cwd="/")
    assert (root / "proc/sys/vm/max_map_count").read_text().strip() == "262144"
    invocation = [*PREFIX, "--root", str(root), "--config", str(config)]
    for cid, c in fixable.items():
        command = c["fix"]["command"]
        assert command[: len(invocation)] == invocation, command  # never the real host, always this config
        assert shlex.split(c["hint"].partition("  #")[0]) == command  # the table's line is the same command
        rc, out = agent(root, config, *command[len(invocation) :])
        assert rc == 0, (cid, out)
        assert report(root, config)[cid]["status"] == "pass", cid


def test_desired_is_what_apply_writes(tree: tuple[Path, Path]) -> None:
    root, config = tree
    rmem = report(root, config)["sysctl.net.ipv4.tcp_rmem"]
    # config "4096 87380 134217728", host "4096 131072 6291456": a floor keeps 131072
    assert rmem["desired"] == "4096 131072 134217728"
    assert rmem["fix"]["note"] == "by hand: sysctl -w 'net.ipv4.tcp_rmem=4096 131072 134217728'"
    assert agent(root, config, "apply", "--only", "sysctl.net.ipv4.tcp_rmem")[0] == 0
    assert (root / "proc/sys/net/ipv4/tcp_rmem").read_text().split() == rmem["desired"].split()


def test_the_binary_as_invoked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exe = tmp_path / "bin" / "vllm-nodeagent"
    exe.parent.mkdir()
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", str(exe.parent))
    assert self_argv(str(exe)) == ["vllm-nodeagent"]  # PATH finds this very file: the short name pastes
    monkeypatch.setenv("PATH", "/nonexistent")
    assert self_argv(str(exe)) == [str(exe)]
    assert self_argv("bin/vllm-nodeagent") == [os.path.abspath("bin/vllm-nodeagent")]
    assert self_argv("/x/vllm_nodeagent/cli.py") == [sys.executable, "-m", "vllm_nodeagent.cli"]
