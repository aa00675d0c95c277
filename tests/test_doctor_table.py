"""doctor's table (issue 26.7): fitted to the terminal (CURRENT/DESIRED were cut at 40 characters at any width),
--wide and a pipe cut nothing, a fix command is never cut, colour only on a terminal (NO_COLOR honoured), and
``doctor --only ID...``."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
from fakehost import FakeHost

from vllm_nodeagent import cli
from vllm_nodeagent.checks.base import CheckResult, Fix
from vllm_nodeagent.commands.doctor import render, use_colour

REPO = Path(__file__).resolve().parent.parent
LONG = "GPU0:node0/0-55, GPU1:node0/0-55, GPU2:node0/0-55, GPU3:node0/0-55, GPU4:node1/56-111"
CHECKS = [
    CheckResult("topology.gpu_numa", "pass", LONG, "NVML and sysfs agree", "", "all placed"),
    CheckResult(
        "sysctl.vm.max_map_count", "fail", "65530", "262144", "", "", Fix(args=("apply", "--only", "x"), note="n")
    ),
]
INVOCATION = ["vllm-nodeagent", "--root", "/srv/a/very/long/tree/path/that/goes/on", "--config", "/etc/c.toml"]


def test_wide_and_piped_cut_nothing() -> None:
    table = render(CHECKS, INVOCATION, width=None)
    assert LONG in table  # today: cut at 40 characters
    assert "vllm-nodeagent --root /srv/a/very/long/tree/path/that/goes/on --config /etc/c.toml apply --only x" in table


@pytest.mark.parametrize("width", [80, 120, 200])
def test_fitted_to_the_terminal_and_the_fix_never_cut(width: int) -> None:
    lines = render(CHECKS, INVOCATION, width=width).splitlines()
    fix = [ln for ln in lines if ln.startswith("    ")]
    assert fix == ["    " + " ".join(INVOCATION) + " apply --only x  # n"]  # whole: it must paste
    assert all(len(ln) <= width for ln in lines if ln not in fix)
    if width >= 200:
        assert LONG in "\n".join(lines)  # a wide terminal shows it whole


def test_colour_only_on_a_terminal_and_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "\x1b[31mFAIL\x1b[0m" in render(CHECKS, INVOCATION, width=100, colour=True)
    assert "\x1b[" not in render(CHECKS, INVOCATION, width=100, colour=False)
    assert use_colour(io.StringIO()) is False
    master, slave = pty.openpty()
    with os.fdopen(slave, "w") as tty:
        monkeypatch.delenv("NO_COLOR", raising=False)
        monkeypatch.setenv("TERM", "xterm")
        assert use_colour(tty) is True
        monkeypatch.setenv("NO_COLOR", "1")
        assert use_colour(tty) is False
    os.close(master)


def test_piped_doctor_has_no_colour(hgx: FakeHost) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "vllm_nodeagent.cli", "--root", str(hgx.root), "doctor"],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)),
    )  # fmt: skip
    assert "\x1b[" not in r.stdout and "STATUS" in r.stdout


def doctor(root: Path, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(["--root", str(root), "doctor", *args])
    return rc, out.getvalue(), err.getvalue()


def test_doctor_only(hgx: FakeHost, tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[sysctl]\n"vm.max_map_count" = 262144\n[thp]\nenabled = "always"\n')
    cfg.chmod(0o600)
    rc, out, _ = doctor(hgx.root, "--config", str(cfg), "--only", "sysctl", "thp.enabled", "--json")
    ids = [c["id"] for c in json.loads(out)["checks"]]
    assert ids == ["sysctl.vm.max_map_count", "thp.enabled"] and rc == 1  # the sysctl fails
    rc, out, _ = doctor(hgx.root, "--config", str(cfg), "--only", "thp", "--json")
    assert rc == 0 and [c["id"] for c in json.loads(out)["checks"]] == ["thp.enabled"]
    rc, out, err = doctor(hgx.root, "--only", "nosuch")
    assert rc == 2 and out == "" and "--only nosuch: no such check; known: config, nvml," in err
    rc, out, err = doctor(hgx.root, "--only", "sysctl.vm.nosuch")  # a known family, nothing of that name here
    assert rc == 2 and out == "" and "matches no check" in err
