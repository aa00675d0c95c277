"""The two-unit layout without systemd: `serve` (vLLM's own unit) and `run --layout split` (host work only),
as real subprocesses with the stand-in vLLM, a real NOTIFY_SOCKET and numactl (the bed of test_daemon.py).
What systemd adds (User=, the sandbox, restarts, the cgroup) is proven in tests/vm/test_two_units.py."""

# ruff: noqa: F811 - the tests take test_daemon's `bed` fixture, imported by name
from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_daemon import REPO, Bed, bed, pid_alive, wait_until  # noqa: F401

from vllm_nodeagent.host import Host
from vllm_nodeagent.serving.layout import SERVE_UNIT, detect

SYSCTL = '[sysctl]\n"vm.max_map_count" = 262144\n'


def test_serve_ready_after_health_stop_leaves_nothing_and_touches_no_setting(bed: Bed, tmp_path: Path) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir()
    bed.hold.write_text("")
    bed.write_config(vllm={}, extra=SYSCTL, standin_args=["--hold-file", str(bed.hold), "--workers", "1"])
    bed.start(env={"RUNTIME_DIRECTORY": str(runtime)}, command=("serve",))
    wait_until(bed.records, "the stand-in to start")
    loading = bed.notify.wait_for("STATUS=vLLM loading")
    assert "READY=1" not in bed.notify.lines()
    bed.hold.unlink()
    bed.notify.wait_for("READY=1", after=loading)
    server = bed.records()[0]
    assert server["mempolicy"] == "bind:0"  # the plan's binding, as in `run`
    pid_file = runtime / "vllm.pid"
    assert int(pid_file.read_text()) == server["pid"]
    # the host agent's work is not done here: no setting written, no metrics file
    assert (bed.root / "proc/sys/vm/max_map_count").read_text().strip() == "65530"
    assert not bed.metrics.exists()
    workers = wait_until(lambda: bed.records("worker"), "the worker")
    bed.signal(signal.SIGTERM)
    assert bed.wait_exit() == 0
    for pid in [server["pid"], *(w["pid"] for w in workers)]:
        assert not pid_alive(pid), pid
    assert not pid_file.exists()


def test_serve_exits_nonzero_when_vllm_dies_after_ready_and_does_not_restart_it(bed: Bed) -> None:
    bed.write_config(vllm={"restart_backoff_initial_s": 0.1}, standin_args=["--crash-after", "0.3"])
    bed.start(command=("serve",))
    bed.notify.wait_for("READY=1")
    assert bed.wait_exit() == 1  # systemd's Restart=on-failure takes it from here
    assert len(bed.records()) == 1
    exited = [e for e in bed.events() if e.get("event") == "vllm_exited"]
    assert "exit status 3" in exited[0]["result"]


def test_serve_exits_nonzero_after_failed_health_checks_and_stops_vllm(bed: Bed) -> None:
    bed.write_config(vllm={"health_interval_s": 0.2, "unhealthy_after": 2}, standin_args=["--hold-file", str(bed.hold)])
    bed.start(command=("serve",))
    bed.notify.wait_for("READY=1")
    pid = bed.records()[0]["pid"]
    bed.hold.write_text("")  # alive but answering 503
    assert bed.wait_exit() == 1
    assert not pid_alive(pid)
    assert len(bed.records()) == 1
    assert any(e.get("event") == "vllm_unhealthy" for e in bed.events())


def test_serve_with_nothing_to_serve_is_ready_then_exits_zero(bed: Bed) -> None:
    bed.write_config()
    bed.start(command=("serve",))
    assert bed.wait_exit() == 0
    assert any(line.startswith("READY=1") for line in bed.notify.lines())


def test_serve_configured_answers_without_starting_anything(bed: Bed) -> None:
    def configured() -> int:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "vllm_nodeagent.cli",
                "--root",
                str(bed.root),
                "--config",
                str(bed.config),
                "serve",
                "--configured",
            ],
            cwd=str(REPO),
            capture_output=True,
            check=False,
            timeout=60,
        ).returncode

    bed.write_config(vllm={"user": "vllm"})
    assert configured() == 0
    assert bed.records() == []
    bed.write_config(vllm={"user": "root"})  # the serve unit runs as vllm: leave such an install single
    assert configured() == 1
    bed.write_config()
    assert configured() == 1


def test_run_split_layout_does_host_work_only(bed: Bed) -> None:
    bed.write_config(vllm={}, extra=SYSCTL)
    bed.start(command=("run", "--layout", "split"))
    bed.notify.wait_for("READY=1")
    assert (bed.root / "proc/sys/vm/max_map_count").read_text().strip() == "262144"
    assert bed.records() == []  # vLLM is the serve unit's
    layout = [e for e in bed.events() if e.get("event") == "layout"]
    assert layout[0]["layout"] == "split"
    bed.signal(signal.SIGTERM)
    assert bed.wait_exit() == 0
    assert bed.records() == []


@pytest.mark.parametrize(
    ("answers", "want"),
    [
        ({"is-enabled": "enabled", "is-active": "inactive"}, "split"),
        ({"is-enabled": "disabled", "is-active": "active"}, "split"),
        ({"is-enabled": "disabled", "is-active": "inactive"}, "single"),
        ({"is-enabled": "", "is-active": ""}, "single"),  # not installed / systemctl cannot answer
    ],
)
def test_layout_auto_follows_the_serve_unit(tmp_path: Path, answers: dict[str, str], want: str) -> None:
    asked: list[tuple[str, str]] = []

    def query(verb: str, unit: str) -> str:
        asked.append((verb, unit))
        return answers[verb]

    host = Host("/")
    if not host.exists("/run/systemd/system"):
        # this machine has no systemd as PID 1: auto must say single without asking
        assert detect(host, "auto", query).name == "single" and asked == []
        return
    assert detect(host, "auto", query).name == want
    assert all(unit == SERVE_UNIT for _, unit in asked)


def test_layout_explicit_and_fake_root(tmp_path: Path) -> None:
    (tmp_path / "run/systemd/system").mkdir(parents=True)
    never = {"called": False}

    def query(verb: str, unit: str) -> str:
        never["called"] = True
        return "enabled"

    assert detect(Host(str(tmp_path)), "auto", query).name == "single"  # a --root tree has no service manager
    assert detect(Host(str(tmp_path)), "split", query).name == "split"
    assert detect(Host("/"), "single", query).name == "single"
    assert never["called"] is False
