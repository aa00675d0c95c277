"""`vllm-nodeagent reload`, the units' ExecReload=, against a real `vllm-nodeagent run` (the stand-in vLLM where
one is configured): it returns only once the daemon has the new config in force, or fails naming the config
error while the daemon keeps the old one. ``/bin/kill -HUP`` returned before the daemon had read the config, so
``systemctl reload`` returned and the unit turned "reloading" afterwards (the VM bed's test_05 saw it)."""

# ruff: noqa: F811 - the tests take test_daemon's `bed` fixture, imported by name
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Optional

from test_daemon import REPO, WAIT_S, Bed, bed, completions, wait_until  # noqa: F401

from vllm_nodeagent.daemon.reload_ack import ReloadAck, format_ack, parse_ack

RUNTIME = "/run/vllm-nodeagent"  # the unit's $RUNTIME_DIRECTORY, under --root like every host path
# A process that never answers a reload and lives argv[1] seconds
IGNORES_HUP = [
    sys.executable,
    "-c",
    "import signal,sys,time; signal.signal(signal.SIGHUP, signal.SIG_IGN); time.sleep(int(sys.argv[1]))",
]


def runtime_dir(b: Bed) -> Path:
    d = b.root / RUNTIME.lstrip("/")
    d.mkdir(parents=True, exist_ok=True)
    return d


def reload_argv(b: Bed, *extra: str) -> list[str]:
    return [sys.executable, "-m", "vllm_nodeagent.cli", "--root", str(b.root), "reload", *extra]


def reload_env(pid: Optional[int], runtime: bool = True) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "MAINPID", "RUNTIME_DIRECTORY")}
    env["PYTHONPATH"] = str(REPO)
    if runtime:
        env["RUNTIME_DIRECTORY"] = RUNTIME
    if pid is not None:
        env["MAINPID"] = str(pid)  # what systemd sets for ExecReload=
    return env


def reload(b: Bed, pid: Optional[int], runtime: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        reload_argv(b),
        env=reload_env(pid, runtime),
        capture_output=True,
        text=True,
        timeout=WAIT_S * 2,
        cwd=str(REPO),
    )


def start(b: Bed) -> int:
    runtime_dir(b)
    b.start(env={"RUNTIME_DIRECTORY": RUNTIME})
    b.notify.wait_for("READY=1")
    assert b.proc is not None
    return b.proc.pid


def max_map_count(b: Bed) -> str:
    return (b.root / "proc/sys/vm/max_map_count").read_text().strip()


def test_returns_once_the_new_config_is_in_force(bed: Bed) -> None:
    bed.write_config(extra='[sysctl]\n"vm.max_map_count" = 262144\n')
    pid = start(bed)
    assert max_map_count(bed) == "262144"
    bed.write_config(extra='[sysctl]\n"vm.max_map_count" = 300000\n')
    res = reload(bed, pid)
    assert res.returncode == 0, res.stderr
    assert "reloaded" in res.stdout
    assert max_map_count(bed) == "300000"  # applied before the command returned, not some time after
    lines = bed.notify.lines()
    assert "RELOADING=1" in lines and lines.index("RELOADING=1") < len(lines) - 1 - lines[::-1].index("READY=1")


def test_a_broken_config_fails_the_reload_and_the_daemon_keeps_the_old_one(bed: Bed) -> None:
    bed.write_config(extra='[sysctl]\n"vm.max_map_count" = 262144\n')
    pid = start(bed)
    good = bed.config.read_text()
    bed.config.write_text(good.replace('"vm.max_map_count" = 262144', '"vm.max_map_count" = 300000') + "[agent\n")
    res = reload(bed, pid)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "config error" in res.stderr and str(bed.config) in res.stderr and "kept" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert bed.proc is not None and bed.proc.poll() is None
    assert max_map_count(bed) == "262144"
    # The next good config is taken: the refusal left nothing behind that a later reload trips on.
    bed.config.write_text(good.replace("262144", "300001"))
    res = reload(bed, pid)
    assert res.returncode == 0, res.stderr
    assert max_map_count(bed) == "300001"


def test_waits_for_a_restarted_vllm_to_pass_the_gate(bed: Bed) -> None:
    bed.write_config(vllm={})
    pid = start(bed)
    smoke_hold = bed.base / "share" / "smoke-hold"
    smoke_hold.write_text("")
    good = bed.config.read_text()
    bed.config.write_text(good.replace('"--record"', f'"--smoke-hold-file", "{smoke_hold}", "--record"'))
    waiter = subprocess.Popen(
        reload_argv(bed), env=reload_env(pid), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_until(lambda: [c for c in completions(bed) if c["code"] == 503], "the new vLLM's held smoke completion")
        assert waiter.poll() is None  # the new vLLM is not past the gate: the reload is not over
        smoke_hold.unlink()
        _out, err = waiter.communicate(timeout=WAIT_S)
        assert waiter.returncode == 0, err
        new_pid = bed.records()[1]["pid"]
        assert [c["pid"] for c in completions(bed) if c["code"] == 200][-1] == new_pid
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait()


def test_a_daemon_that_dies_during_the_reload_fails_it(bed: Bed) -> None:
    runtime_dir(bed)
    armed = bed.base / "armed"
    # SIGHUP's default action ends it: no answer will ever come. Set explicitly: a run under nohup inherits SIG_IGN.
    victim = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import pathlib,signal,time\n"
            "signal.signal(signal.SIGHUP, signal.SIG_DFL)\n"
            f"pathlib.Path({str(armed)!r}).write_text('')\n"
            "time.sleep(60)",
        ]
    )
    try:
        wait_until(armed.exists, "the victim's default SIGHUP action")
        res = reload(bed, victim.pid)
        assert res.returncode == 1
        assert f"pid {victim.pid}" in res.stderr and "exited during the reload" in res.stderr
    finally:
        victim.kill()
        victim.wait()


def test_an_earlier_reloads_answer_is_not_this_ones(bed: Bed) -> None:
    """An ack from before the signal (an older reload, an earlier daemon) is ignored: the daemon must answer anew."""
    (runtime_dir(bed) / "reload.ack").write_text("1 ok\n")
    victim = subprocess.Popen([*IGNORES_HUP, "3"])
    try:
        res = reload(bed, victim.pid)
        assert res.returncode == 1 and "exited during the reload" in res.stderr  # waited until it was gone
    finally:
        victim.kill()
        victim.wait()


def test_a_planted_ack_link_is_refused_not_followed(bed: Bed, tmp_path: Path) -> None:
    secret = tmp_path / "elsewhere"
    secret.write_text(f"{10**18} ok\n")  # would be taken as the answer if the link were followed
    (runtime_dir(bed) / "reload.ack").symlink_to(secret)
    victim = subprocess.Popen([*IGNORES_HUP, "30"])
    try:
        res = reload(bed, victim.pid)
        assert res.returncode == 3, (res.stdout, res.stderr)
        assert "reload.ack" in res.stderr and len(res.stderr.strip().splitlines()) == 1
        assert "Traceback" not in res.stderr
    finally:
        victim.kill()
        victim.wait()


def test_without_a_pid_or_a_process(bed: Bed) -> None:
    res = reload(bed, None)
    assert res.returncode == 2 and "MAINPID" in res.stderr
    gone = subprocess.Popen(["true"])
    gone.wait()
    res = reload(bed, gone.pid)
    assert res.returncode == 1 and f"no process {gone.pid}" in res.stderr


def test_outside_systemd_it_signals_and_says_it_does_not_wait(bed: Bed) -> None:
    got, armed = bed.base / "got-hup", bed.base / "armed"
    victim = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal,sys,time,pathlib\n"
            f"signal.signal(signal.SIGHUP, lambda *a: (pathlib.Path({str(got)!r}).write_text('x'), sys.exit(0)))\n"
            f"pathlib.Path({str(armed)!r}).write_text('')\n"
            "time.sleep(30)",
        ]
    )
    try:
        wait_until(armed.exists, "the victim's SIGHUP handler")
        res = reload(bed, victim.pid, runtime=False)
        assert res.returncode == 0 and "not waiting" in res.stdout
        assert victim.wait(timeout=WAIT_S) == 0 and got.read_text() == "x"
    finally:
        if victim.poll() is None:
            victim.send_signal(signal.SIGKILL)
            victim.wait()


def test_ack_lines_round_trip_and_foreign_text_is_no_answer() -> None:
    ok = ReloadAck(123, True, "")
    refused = ReloadAck(456, False, "config.toml: line 3: bad\nvalue")
    assert parse_ack(format_ack(ok)) == ok
    assert parse_ack(format_ack(refused)) == ReloadAck(456, False, "config.toml: line 3: bad value")
    for text in ("", "ok", "12", "12 maybe", "-1 ok", "12 ok trailing", "x ok"):
        assert parse_ack(text) is None, text
