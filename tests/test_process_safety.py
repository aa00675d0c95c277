"""Process safety with the stand-in vLLM in real vLLM's shape (API server → engine → workers, one process group):
a crashed leader's group is ended before the restart, vLLM dies with a kill -9'd agent (PDEATHSIG) and a
restarted agent ends what is left (the pid file), one daemon per state dir, and SIGTERM ends a wait for the
journal lock (issue 22)."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_daemon import WAIT_S, Bed, pid_alive, wait_until

from vllm_nodeagent.host.proc import Procfs
from vllm_nodeagent.settings.journal import LOCK_NAME

pytestmark = pytest.mark.skipif(not shutil.which("numactl"), reason="numactl not installed")


@pytest.fixture
def bed() -> Iterator[Bed]:
    base = tempfile.mkdtemp(prefix="vna-")
    b = Bed(base)
    try:
        yield b
    finally:
        b.stop()
        print(b.stderr_path.read_text()[-3000:] if b.stderr_path.exists() else "no daemon log")
        for r in b.records("server") + b.records("engine") + b.records("worker"):
            if pid_alive(r["pid"]):
                os.kill(r["pid"], signal.SIGKILL)
        shutil.rmtree(base, ignore_errors=True)


def orphans(pids: list[int]) -> list[int]:
    """Those of ``pids`` still running (their parent gone: PPID 1 or a subreaper)."""
    return [p for p in pids if pid_alive(p)]


def tree_of(bed: Bed, server_pid: int) -> list[int]:
    engines = [r["pid"] for r in bed.records("engine") if r["ppid"] == server_pid]
    return engines + [r["pid"] for r in bed.records("worker") if r["ppid"] in engines]


def test_three_crashes_under_launch_leave_no_worker(bed: Bed) -> None:
    """Was: after 3 crashes, 3 x (engine + 2 workers) still running beside the restarted vLLM."""
    bed.write_config(
        vllm={"restart_backoff_initial_s": 0.2, "stop_timeout_s": 1},
        standin_args=["--crash-after", "0.5", "--engine-workers", "2", "--workers-ignore-term"],
    )
    bed.start(env={"NOTIFY_SOCKET": ""}, command=("launch",))  # launch: nobody reads a notify socket
    servers = wait_until(lambda: bed.records() if len(bed.records()) >= 4 else None, "three crashes and restarts")
    crashed = [s["pid"] for s in servers[:3]]
    left = wait_until(
        lambda: [tree_of(bed, s) for s in crashed] if all(len(tree_of(bed, s)) == 3 for s in crashed) else None,
        "every crashed server's engine and workers recorded",
    )
    # each leftover was ended before the restart that followed its leader's crash
    assert orphans([p for tree in left for p in tree]) == []
    assert all(not pid_alive(s) for s in crashed)
    ended = [e for e in bed.events() if e.get("event") == "vllm_leftovers"]
    assert len(ended) >= 3 and all(len(e["pids"]) == 3 for e in ended[:3]), ended
    assert any(e.get("event") == "vllm_leftovers_kill" for e in bed.events())  # they ignore SIGTERM


def test_kill_9_of_run_ends_vllm_and_the_next_agent_reclaims_the_rest(bed: Bed) -> None:
    bed.write_config(vllm={"stop_timeout_s": 1}, standin_args=["--engine-workers", "2", "--workers-ignore-term"])
    bed.start()
    bed.notify.wait_for("READY=1")
    server = bed.records()[0]["pid"]
    tree = wait_until(lambda: tree_of(bed, server) if len(tree_of(bed, server)) == 3 else None, "engine, workers")
    assert bed.proc is not None
    bed.proc.kill()  # kill -9: no stop, no cleanup
    bed.proc.wait()
    wait_until(lambda: not pid_alive(server), "the API server to get its PDEATHSIG (SIGTERM) and exit")
    assert orphans(tree) == tree  # the stand-in's engine and workers do not watch their parent: left running
    assert all(Procfs().stat(p).ppid != bed.proc.pid for p in tree)
    mark = len(bed.notify.lines())
    bed.stderr.close()
    bed.start()  # the restarted agent: ends the leftovers (the pid file) before it starts another vLLM
    bed.notify.wait_for("READY=1", after=mark)
    assert orphans(tree) == []
    reclaimed = [e for e in bed.events() if e.get("event") == "vllm_reclaimed"]
    assert reclaimed and sorted(reclaimed[0]["pids"]) == sorted(tree)
    assert len(bed.records()) == 2 and pid_alive(bed.records()[1]["pid"])


def test_a_second_run_on_one_state_dir_exits_3_naming_the_holder(bed: Bed) -> None:
    bed.write_config()
    bed.start()
    bed.notify.wait_for("READY=1")
    first = bed.proc
    assert first is not None
    second = Bed.__new__(Bed)
    second.__dict__.update(bed.__dict__)
    second.stderr_path = bed.base / "second.log"
    second.start()
    assert second.wait_exit() == 3
    text = second.stderr_path.read_text()
    assert f"is held by pid {first.pid}" in text and "another daemon runs on /var/lib/vllm-nodeagent" in text
    assert first.poll() is None  # the first one is untouched
    second.stderr.close()


def test_sigterm_while_waiting_for_the_journal_lock_exits(bed: Bed) -> None:
    """Was: the wait went on for its 120 s; the daemon ignored SIGTERM meanwhile."""
    bed.write_config()
    lock = bed.root / bed.state.lstrip("/") / LOCK_NAME
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # an operator's apply holds the journal
        bed.start()
        wait_until(lambda: any(e.get("event") == "journal_lock_wait" for e in bed.events()), "the lock wait")
        bed.signal(signal.SIGTERM)
        assert bed.wait_exit() == 0  # within WAIT_S, well before the lock's 120 s and while it is still held
    assert WAIT_S < 120
    assert "READY=1" not in bed.notify.lines()


def test_the_daemon_lock_is_not_a_symlink_target(bed: Bed, tmp_path: Path) -> None:
    target = tmp_path / "victim"
    target.write_text("keep\n")
    state = bed.root / bed.state.lstrip("/")
    state.mkdir(parents=True, exist_ok=True)
    (state / "daemon.lock").symlink_to(target)
    bed.write_config()
    bed.start()
    assert bed.wait_exit() == 3
    assert "cannot lock" in bed.stderr_path.read_text()
    assert target.read_text() == "keep\n"


def test_a_stop_request_ends_the_wait_for_the_argument_probe() -> None:
    """The start waits for the probe (GPUs spanning nodes); a SIGTERM meanwhile must not wait for vLLM's import."""
    import threading

    from vllm_nodeagent.serving.args import ProbeResult
    from vllm_nodeagent.serving.env import LaunchError
    from vllm_nodeagent.serving.probe import ProbeBeside

    release = threading.Event()
    pending = ProbeBeside(lambda: release.wait(120) and ProbeResult(False, reason="done"))  # type: ignore[arg-type]
    asked = []
    try:
        with pytest.raises(LaunchError, match="stopped while waiting for vLLM's argument probe"):
            pending.wait(lambda: asked.append(1) is None and len(asked) >= 3)
        assert pending.result() is None  # it was still running: the wait gave up, not the probe
    finally:
        release.set()
    assert pending.wait().reason == "done"


def test_strays_in_the_agents_own_cgroup_are_ended_others_are_not(tmp_path: Path) -> None:
    """A process that left vLLM's group (setsid) but stayed in the agent's unit's cgroup and runs as the vLLM user
    is ended with the group; the agent, its other children and processes of another uid are not. /proc and the
    cgroup tree are a fixture (this machine has no unit of ours); the processes and signals are real."""
    import subprocess

    from vllm_nodeagent.host import Host
    from vllm_nodeagent.serving.reaper import Reaper

    stray = subprocess.Popen(["sleep", "60"], start_new_session=True)
    foreign = subprocess.Popen(["sleep", "60"], start_new_session=True)
    group = subprocess.Popen(["sleep", "60"], start_new_session=True)  # what is left of vLLM's group
    me = os.getpid()
    root = tmp_path / "root"

    def proc(pid: int, ppid: int, pgid: int, uid: int) -> None:
        d = root / f"proc/{pid}"
        d.mkdir(parents=True)
        (d / "stat").write_text(f"{pid} (x) S {ppid} {pgid} {pgid} 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 100 0\n")
        (d / "status").write_text(f"Name:\tx\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")

    unit = "/system.slice/vllm-nodeagent.service"
    proc(me, 1, me, 0)
    proc(stray.pid, 1, stray.pid, 998)  # vLLM's user, reparented, its own session
    proc(foreign.pid, 1, foreign.pid, 0)  # root's: not vLLM's
    proc(group.pid, 1, group.pid, 998)
    (root / "proc/self").mkdir()
    (root / "proc/self/cgroup").write_text(f"0::{unit}\n")
    procs = root / f"sys/fs/cgroup{unit}/cgroup.procs"
    procs.parent.mkdir(parents=True)
    procs.write_text(f"{me}\n{stray.pid}\n{foreign.pid}\n")
    try:
        reaper = Reaper(group.pid, 998, Procfs(Host(root)))
        assert reaper.cgroup == unit and reaper.strays() == [stray.pid]
        reaper.signal(signal.SIGKILL)
        assert stray.wait(timeout=WAIT_S) == -signal.SIGKILL
        assert group.wait(timeout=WAIT_S) == -signal.SIGKILL
        assert foreign.poll() is None
        (root / "proc/self/cgroup").write_text("0::/system.slice/gitlab-runner.service\n")  # not one of ours
        assert Reaper(group.pid, 998, Procfs(Host(root))).strays() == []
    finally:
        for p in (stray, foreign, group):
            p.kill()
            p.wait()
