"""Backoff arithmetic and Child.stop on a real process group."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from vllm_nodeagent.serving.child import Backoff, Child, Exit, group_members, health_ok
from vllm_nodeagent.serving.plan import LaunchPlan


def test_backoff_doubles_caps_and_resets() -> None:
    b = Backoff(2.0, 10.0, 60.0)
    assert [b.next_delay() for _ in range(5)] == [2.0, 4.0, 8.0, 10.0, 10.0]
    b.healthy_for(59.0)
    assert b.failures == 5
    b.healthy_for(60.0)
    assert b.failures == 0 and b.next_delay() == 2.0


def test_exit_describe() -> None:
    assert Exit(1, 3).describe() == "exit status 3"
    assert Exit(1, -signal.SIGKILL).describe() == "killed by SIGKILL"


def _plan(argv: list[str]) -> LaunchPlan:
    return LaunchPlan(
        argv=argv,
        env={"PATH": "/usr/bin:/bin"},
        numa_nodes=[],
        cpus=[],
        gpus=[],
        gpu_nodes=[],
        binding="none",
        policy="none",
        mempolicy="default",
        user="root",
        uid=0,
        gid=0,
        groups=[],
        switch_user=False,
    )


def test_stop_kills_a_group_that_ignores_sigterm(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    code = (
        "import os, signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "subprocess.Popen([sys.executable, '-c', 'import signal, time; "
        'signal.signal(signal.SIGTERM, signal.SIG_IGN); open(sys.argv[1], "w").close(); time.sleep(60)\', '
        "sys.argv[1]])\n"
        "time.sleep(60)\n"
    )
    child = Child(_plan([sys.executable, "-c", code.replace("'import signal", "'import sys, signal"), str(ready)]))
    for _ in range(500):  # until the grandchild has ignored SIGTERM too
        if ready.exists():
            break
        time.sleep(0.02)
    assert child.poll() is None and child.wait_fd() >= 0
    assert os.getpgid(child.pid) == child.pid  # its own session and group
    assert len(group_members(child.pid)) == 2
    ex = child.stop(0.5)
    assert ex.returncode == -signal.SIGKILL
    assert group_members(child.pid) == []


def test_health_ok_false_when_nothing_listens() -> None:
    assert health_ok("http://127.0.0.1:9/health", timeout=0.5) is False
    assert health_ok("not a url") is False
