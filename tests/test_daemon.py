"""The daemon end to end: a real `vllm-nodeagent run` subprocess, the stand-in vLLM, a real NOTIFY_SOCKET
(unix datagram socket), a real numactl, and a fake --root tree for the settings."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
from fakehost import real_accounts

REPO = Path(__file__).resolve().parent.parent
STANDIN = REPO / "tests" / "standin_vllm.py"
WAIT_S = 30.0  # generous upper bound for "eventually"; never a speed assertion

pytestmark = pytest.mark.skipif(not shutil.which("numactl"), reason="numactl not installed")


def toml_value(val: Any) -> str:
    if isinstance(val, dict):
        return "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in val.items()) + " }"
    return json.dumps(val)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(cond: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class NotifySocket:
    """What systemd would receive: every datagram sent to NOTIFY_SOCKET, split into lines."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def pump(self) -> list[str]:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return self.messages
            self.messages.append(data.decode())

    def lines(self) -> list[str]:
        return [line for m in self.pump() for line in m.split("\n")]

    def wait_for(self, line: str, after: int = 0) -> int:
        """Index (in lines()) of the first ``line`` at or after ``after``."""

        def find() -> Optional[int]:
            lines = self.lines()
            for i in range(after, len(lines)):
                if lines[i] == line or lines[i].startswith(line):
                    return i + 1
            return None

        return int(wait_until(find, f"{line!r} on NOTIFY_SOCKET")) - 1

    def close(self) -> None:
        self.sock.close()


class Bed:
    """A fake host root, a config, a record file for the stand-in, and the daemon process."""

    def __init__(self, base: str) -> None:
        self.base = Path(base)
        self.base.chmod(0o755)  # mkdtemp makes it 0700; the stand-in may run as nobody
        self.root = self.base / "root"
        self.state = "/var/lib/vllm-nodeagent"
        self.notify = NotifySocket(base)
        share = self.base / "share"
        share.mkdir()
        share.chmod(0o777)  # the stand-in may run as nobody
        self.record = share / "record.jsonl"
        self.hold = share / "hold"
        self.metrics = self.root / "var/lib/node_exporter/metrics.prom"  # the config names it under --root
        self.config = self.base / "config.toml"
        self.port = free_port()
        self.proc: Optional[subprocess.Popen[str]] = None
        self.stderr_path = self.base / "daemon.log"
        node = self.root / "sys/devices/system/node/node0"
        node.mkdir(parents=True)
        cpus = sorted(os.sched_getaffinity(0))
        (node / "cpulist").write_text(",".join(str(c) for c in cpus) + "\n")
        (node / "meminfo").write_text("Node 0 MemTotal:       8000000 kB\n")
        sysvm = self.root / "proc/sys/vm"
        sysvm.mkdir(parents=True)
        (sysvm / "max_map_count").write_text("65530\n")
        (self.root / "proc/meminfo").write_text("MemTotal: 8000000 kB\nMemAvailable: 4000000 kB\n")
        self.metrics.parent.mkdir(parents=True)
        real_accounts(self.root, "nobody")  # under --root the accounts are the tree's: root, the machine's nobody

    def write_config(
        self,
        vllm: Optional[dict[str, Any]] = None,
        extra: str = "",
        agent: str = "",
        standin_args: Optional[list[str]] = None,
        python: str = sys.executable,
    ) -> None:
        lines = [
            "[agent]",
            f'state_dir = "{self.state}"',
            "drift_interval_s = 1",
            'metrics_textfile = "/var/lib/node_exporter/metrics.prom"',
            agent,
            extra,
        ]
        if vllm is not None:
            v: dict[str, Any] = {
                "command": [python, str(STANDIN)],
                "model": "standin-model",
                "args": ["--port", str(self.port), "--record", str(self.record), *(standin_args or [])],
                "user": "root",
                "health_url": f"http://127.0.0.1:{self.port}/health",
                "nodes": [0],
                "start_timeout_s": 60,
                "stop_timeout_s": 5,
                "restart_backoff_initial_s": 0.3,
                "restart_backoff_max_s": 10.0,
                "healthy_reset_s": 600.0,
            }
            v.update(vllm)
            lines.append("[vllm]")
            for k, val in v.items():
                lines.append(f"{k} = {toml_value(val)}")
        self.config.write_text("\n".join(lines) + "\n")
        self.config.chmod(0o600)

    def start(self, env: Optional[dict[str, str]] = None, command: tuple[str, ...] = ("run",)) -> None:
        full_env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
        full_env.update({"NOTIFY_SOCKET": self.notify.path, "PYTHONPATH": str(REPO)})
        full_env.update(env or {})
        self.stderr = open(self.stderr_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vllm_nodeagent.cli",
                "--root",
                str(self.root),
                "--config",
                str(self.config),
                "--log-format",
                "json",
                *command,
            ],
            env=full_env,
            stdout=subprocess.DEVNULL,
            stderr=self.stderr,
            text=True,
            cwd=str(REPO),
        )

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.stderr_path.read_text().splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out

    def records(self, role: str = "server") -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        return [r for r in map(json.loads, self.record.read_text().splitlines()) if r["role"] == role]

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait_exit(self) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=WAIT_S)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=WAIT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if hasattr(self, "stderr"):
            self.stderr.close()
        self.notify.close()


@pytest.fixture
def bed() -> Iterator[Bed]:
    base = tempfile.mkdtemp(prefix="vna-")  # short: AF_UNIX paths are limited to 108 bytes
    b = Bed(base)
    try:
        yield b
    finally:
        b.stop()
        print(b.stderr_path.read_text()[-6000:] if b.stderr_path.exists() else "no daemon log")
        for r in b.records("server") + b.records("worker"):
            if pid_alive(r["pid"]):
                os.kill(r["pid"], signal.SIGKILL)
        shutil.rmtree(base, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def health(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except urllib.error.URLError:
        return 0  # not listening yet (the stand-in records its start before it opens the port)


# -- tests --------------------------------------------------------------------------------------------------
def test_ready_only_after_health_then_sigterm_stops(bed: Bed) -> None:
    bed.hold.write_text("")
    bed.write_config(vllm={}, standin_args=["--hold-file", str(bed.hold)])
    bed.start()
    wait_until(bed.records, "the stand-in to start")
    loading = bed.notify.wait_for("STATUS=vLLM loading")
    bed.notify.wait_for("EXTEND_TIMEOUT_USEC=")
    wait_until(lambda: health(bed.port) == 503, "the stand-in to answer 503")
    # Several health polls happen while held; READY must not be among the notifications.
    wait_until(lambda: sum(1 for e in bed.events() if e.get("event") == "vllm_started"), "vllm_started")
    time.sleep(1.5)
    assert "READY=1" not in bed.notify.lines()
    bed.hold.unlink()
    ready = bed.notify.wait_for("READY=1", after=loading)
    assert "vllm_nodeagent_vllm_up 1.0" in bed.metrics.read_text()  # written before READY=1 went out
    assert health(bed.port) == 200
    assert any(line.startswith("STATUS=serving") for line in bed.notify.lines()[ready : ready + 2])
    pid = bed.records()[0]["pid"]
    pid_file = bed.root / bed.state.lstrip("/") / "vllm.pid"
    assert int(pid_file.read_text()) == pid
    bed.signal(signal.SIGTERM)
    assert bed.wait_exit() == 0
    assert "STOPPING=1" in bed.notify.lines()
    assert not pid_alive(pid)
    assert not pid_file.exists()


def test_binding_matches_node0_and_env_is_clean(bed: Bed) -> None:
    bed.write_config(vllm={"env": {"HF_HOME": "/srv/hf"}}, standin_args=["--workers", "2"])
    bed.start()
    bed.notify.wait_for("READY=1")
    wait_until(lambda: len(bed.records("worker")) == 2, "two workers")
    node0 = (bed.root / "sys/devices/system/node/node0/cpulist").read_text().strip()
    for r in bed.records() + bed.records("worker"):
        assert r["mempolicy"] == "bind:0", r  # numactl --membind=0 took effect (default would say "default")
        assert r["Mems_allowed_list"] == "0"
        assert sorted(os.sched_getaffinity(0)) == _cpus(r["Cpus_allowed_list"])
        assert _cpus(node0) == _cpus(r["Cpus_allowed_list"])
    env = bed.records()[0]["env"]
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert env["HF_HOME"] == "/srv/hf"
    assert "NOTIFY_SOCKET" not in env
    verified = [e for e in bed.events() if e.get("event") == "vllm_binding"]
    assert {e["pid"] for e in verified} >= {bed.records()[0]["pid"]}
    assert not [e for e in bed.events() if e.get("event") == "vllm_binding_mismatch"]


def test_numa_none_leaves_default_policy(bed: Bed) -> None:
    bed.write_config(vllm={"numa": "none"})
    bed.start()
    bed.notify.wait_for("READY=1")
    assert bed.records()[0]["mempolicy"] == "default"


def _cpus(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def test_restart_backoff_grows(bed: Bed) -> None:
    bed.write_config(vllm={"restart_backoff_initial_s": 0.4}, standin_args=["--crash-after", "1.0"])
    bed.start()
    bed.notify.wait_for("READY=1")
    starts = wait_until(lambda: bed.records() if len(bed.records()) >= 4 else None, "four starts")
    t = [r["time"] for r in starts[:4]]
    gaps = [b - a for a, b in zip(t, t[1:])]
    exits = [e for e in bed.events() if e.get("event") == "vllm_exited"]
    assert [e["restart_in_s"] for e in exits[:3]] == [0.4, 0.8, 1.6]
    # each restart really waited its delay (a lower bound: a loaded machine only makes gaps longer)
    assert all(gap >= delay for gap, delay in zip(gaps, [0.4, 0.8, 1.6])), gaps
    assert any(e.get("event") == "vllm_crash_loop" for e in bed.events()) or len(exits) < 3
    assert "exit status 3" in exits[0]["result"]
    assert any(line.startswith("STATUS=vLLM exited") for line in bed.notify.lines())


def test_hung_vllm_is_restarted_after_failed_health_checks(bed: Bed) -> None:
    bed.write_config(vllm={"health_interval_s": 0.2, "unhealthy_after": 3}, standin_args=["--hold-file", str(bed.hold)])
    bed.start()
    bed.notify.wait_for("READY=1")
    first = bed.records()[0]["pid"]
    bed.hold.write_text("")  # the stand-in answers 503 while this file exists: alive, but not serving
    wait_until(lambda: any(e.get("event") == "vllm_unhealthy" for e in bed.events()), "vllm_unhealthy")
    bed.hold.unlink()
    second = wait_until(lambda: bed.records()[1:] or None, "a second start")[0]["pid"]
    assert second != first and not pid_alive(first)
    failed = [e for e in bed.events() if e.get("event") == "vllm_health_failed"]
    assert [e["failures"] for e in failed[:3]] == [1, 2, 3]
    exits = [e for e in bed.events() if e.get("event") == "vllm_exited"]
    assert exits and exits[0]["result"].startswith("unhealthy")


def test_crash_during_first_load_is_a_failed_start(bed: Bed) -> None:
    bed.write_config(vllm={}, standin_args=["--crash-during-load"])
    bed.start()
    assert bed.wait_exit() == 1
    assert "READY=1" not in bed.notify.lines()
    assert any(e.get("event") == "vllm_failed_start" for e in bed.events())


def test_sigterm_kills_the_whole_group(bed: Bed) -> None:
    bed.write_config(vllm={"stop_timeout_s": 1}, standin_args=["--workers", "2", "--workers-ignore-term"])
    bed.start()
    bed.notify.wait_for("READY=1")
    workers = wait_until(lambda: bed.records("worker") if len(bed.records("worker")) == 2 else None, "workers")
    server = bed.records()[0]
    assert all(w["ppid"] == server["pid"] for w in workers)  # grandchildren of the agent
    bed.signal(signal.SIGTERM)
    assert bed.wait_exit() == 0
    for p in [server["pid"], *(w["pid"] for w in workers)]:
        assert not pid_alive(p), p


def test_sighup_bad_config_keeps_old_good_config_restarts_vllm(bed: Bed) -> None:
    bed.write_config(vllm={})
    bed.start()
    first_ready = bed.notify.wait_for("READY=1")
    pid = bed.records()[0]["pid"]
    good = bed.config.read_text()
    bed.config.write_text(good + "[vllm.bogus\n")
    bed.signal(signal.SIGHUP)
    reloading = bed.notify.wait_for("RELOADING=1", after=first_ready)
    mono = [line for line in bed.notify.lines()[reloading:] if line.startswith("MONOTONIC_USEC=")]
    assert mono and int(mono[0].split("=")[1]) > 0
    bed.notify.wait_for("READY=1", after=reloading)
    assert any(e.get("event") == "config_reload_failed" for e in bed.events())
    assert bed.proc is not None and bed.proc.poll() is None
    assert [r["pid"] for r in bed.records()] == [pid] and pid_alive(pid)
    # A good config with a changed [vllm] section restarts vLLM with the new arguments.
    bed.config.write_text(good.replace('"--record"', '"--reloaded", "--record"'))
    bed.signal(signal.SIGHUP)
    wait_until(lambda: len(bed.records()) == 2, "vLLM restarted with the new config")
    assert "--reloaded" in bed.records()[1]["argv"]
    assert not pid_alive(pid)


def test_drift_is_reapplied_and_counted(bed: Bed) -> None:
    bed.write_config(extra='[sysctl]\n"vm.max_map_count" = 262144\n')
    bed.start()
    ready = bed.notify.wait_for("READY=1")
    assert bed.notify.lines()[ready + 1].startswith("STATUS=watching; 0 drift") or any(
        line == "STATUS=watching; 0 drift" for line in bed.notify.lines()
    )
    knob = bed.root / "proc/sys/vm/max_map_count"
    assert knob.read_text().strip() == "262144"
    knob.write_text("100\n")  # behind the agent's back
    wait_until(lambda: knob.read_text().strip() == "262144", "the drifted setting to be re-applied")
    drift = [e for e in bed.events() if e.get("event") == "drift"]
    assert drift[0]["id"] == "sysctl.vm.max_map_count"
    assert drift[0]["current"] == "100" and drift[0]["desired"] == "262144"
    assert drift[0]["level"] == "warning"
    bed.notify.wait_for("STATUS=watching; 1 drift")
    text = wait_until(
        lambda: (
            bed.metrics.exists()
            and "vllm_nodeagent_drift_total 1.0" in bed.metrics.read_text()
            and bed.metrics.read_text()
        ),
        "metrics",
    )
    assert 'vllm_nodeagent_setting_compliant{id="sysctl.vm.max_map_count"} 1.0' in text


def prom_text(bed: Bed) -> str:
    return bed.metrics.read_text() if bed.metrics.exists() else ""


def test_drift_audit_mode_only_reports(bed: Bed) -> None:
    """Audit: reported, never re-applied; one event per change, not one per drift check (issue 25: the counter and
    a warning grew at every interval); a second change is a second event, the way back is logged once."""
    bed.write_config(agent='mode = "audit"', extra='[sysctl]\n"vm.max_map_count" = 262144\n')
    knob = bed.root / "proc/sys/vm/max_map_count"
    knob.write_text("300000\n")  # compliant at start: audit writes nothing, so only a later change is drift
    bed.start()
    bed.notify.wait_for("READY=1")
    knob.write_text("100\n")
    wait_until(lambda: [e for e in bed.events() if e.get("event") == "drift"], "a drift event")
    bed.notify.wait_for("STATUS=watching; 1 drift")
    assert knob.read_text().strip() == "100"
    wait_until(lambda: 'compliant{id="sysctl.vm.max_map_count"} 0.0' in prom_text(bed), "gauge 0")

    def checks_seen() -> float:
        for line in prom_text(bed).splitlines():
            if line.startswith("vllm_nodeagent_last_check_timestamp_seconds "):
                return float(line.split()[1])
        return 0.0

    first = checks_seen()
    wait_until(lambda: checks_seen() >= first + 3, "three more drift checks (drift_interval_s = 1)")
    drifts = [e for e in bed.events() if e.get("event") == "drift"]
    assert len(drifts) == 1, drifts
    assert "vllm_nodeagent_drift_total 1.0" in prom_text(bed)
    knob.write_text("200\n")  # a second change
    wait_until(lambda: len([e for e in bed.events() if e.get("event") == "drift"]) == 2, "a second drift event")
    wait_until(lambda: "vllm_nodeagent_drift_total 2.0" in prom_text(bed), "counter 2")
    knob.write_text("262144\n")  # put back by hand
    wait_until(lambda: [e for e in bed.events() if e.get("event") == "drift_resolved"], "drift_resolved")
    wait_until(lambda: 'compliant{id="sysctl.vm.max_map_count"} 1.0' in prom_text(bed), "gauge 1")
    assert len([e for e in bed.events() if e.get("event") == "drift"]) == 2


def test_revert_on_stop(bed: Bed) -> None:
    bed.write_config(agent="revert_on_stop = true", extra='[sysctl]\n"vm.max_map_count" = 262144\n')
    bed.start()
    bed.notify.wait_for("READY=1")
    knob = bed.root / "proc/sys/vm/max_map_count"
    assert knob.read_text().strip() == "262144"
    bed.signal(signal.SIGTERM)
    assert bed.wait_exit() == 0
    assert knob.read_text().strip() == "65530"


def test_watchdog_pings(bed: Bed) -> None:
    bed.write_config()
    bed.start(env={"WATCHDOG_USEC": "200000"})
    bed.notify.wait_for("READY=1")
    wait_until(lambda: bed.notify.lines().count("WATCHDOG=1") >= 5, "five watchdog pings")


def test_watchdog_for_another_pid_is_ignored(bed: Bed) -> None:
    bed.write_config()
    bed.start(env={"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"})
    bed.notify.wait_for("READY=1")
    time.sleep(1.0)
    assert "WATCHDOG=1" not in bed.notify.lines()


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_runs_vllm_as_unprivileged_user(bed: Bed) -> None:
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("no system python3 that nobody can execute")
    import pwd

    from test_launcher import PERMISSIVE_CLI_ARGS, fake_vllm_site

    site = fake_vllm_site(bed.base / "share", cli_args=PERMISSIVE_CLI_ARGS)  # world-readable: the probe runs as nobody
    bed.write_config(vllm={"user": "nobody", "env": {"PYTHONPATH": site}}, python=python)
    bed.start()
    bed.notify.wait_for("READY=1")
    r = bed.records()[0]
    nobody = pwd.getpwnam("nobody")
    assert r["uid"] == nobody.pw_uid and r["gid"] == nobody.pw_gid
    # nobody's home (/nonexistent) is unusable: HOME and every compile cache live in the agent's cache dir
    cache = bed.root / "var/cache/vllm-nodeagent/nobody"
    assert r["env"]["HOME"] == str(cache) and r["env"]["XDG_CACHE_HOME"] == f"{cache}/.cache"
    assert r["env"]["TORCHINDUCTOR_CACHE_DIR"] == f"{cache}/torchinductor"
    assert r["env"]["TRITON_CACHE_DIR"] == f"{cache}/triton" and r["env"]["VLLM_CACHE_ROOT"] == f"{cache}/vllm"
    st = cache.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (nobody.pw_uid, nobody.pw_gid, 0o700)
    assert r["env"]["USER"] == "nobody"
    assert r["mempolicy"] == "bind:0"  # numactl first, then the user: the binding survives the switch
    # the argument probe ran vLLM's (fake) code as nobody, never as root
    ok = [e for e in bed.events() if e.get("event") == "vllm_args_ok"]
    assert ok and ok[0]["uid"] == nobody.pw_uid, bed.events()
    bed.signal(signal.SIGTERM)
    assert bed.wait_exit() == 0
    assert not pid_alive(r["pid"])


def test_missing_user_is_a_clear_failed_start(bed: Bed) -> None:
    bed.write_config(vllm={"user": "no-such-user-vna"})
    bed.start()
    assert bed.wait_exit() == 1
    errors = [e for e in bed.events() if e.get("event") == "vllm_start_failed"]
    assert "no-such-user-vna" in errors[0]["error"] and "does not exist" in errors[0]["error"]


# -- the readiness gate: /health 200 and then a one-token completion ------------------------------------------
def completions(bed: Bed) -> list[dict[str, Any]]:
    return bed.records("completion")


def test_ready_waits_for_the_smoke_completion(bed: Bed) -> None:
    smoke_hold = bed.base / "share" / "smoke-hold"
    smoke_hold.write_text("")
    bed.write_config(vllm={}, standin_args=["--smoke-hold-file", str(smoke_hold)])
    bed.start()
    loading = bed.notify.wait_for("STATUS=vLLM loading: waiting for http://127.0.0.1")
    gating = bed.notify.wait_for("STATUS=vLLM loading: health ok, smoke completion", after=loading)
    wait_until(lambda: len(completions(bed)) >= 2, "two refused smoke completions")  # /health is 200 meanwhile
    assert health(bed.port) == 200
    assert "READY=1" not in bed.notify.lines()
    assert any(e.get("event") == "vllm_smoke_failed" and "HTTP 503" in e["detail"] for e in bed.events())
    smoke_hold.unlink()
    ready = bed.notify.wait_for("READY=1", after=gating)
    assert bed.notify.lines()[ready + 1].startswith("STATUS=serving")
    ok = [c for c in completions(bed) if c["code"] == 200]
    assert ok and ok[0]["model"] == "standin-model" and ok[0]["max_tokens"] == 1
    healthy = [e for e in bed.events() if e.get("event") == "vllm_healthy"]
    assert healthy[0]["gate"] == "health+completion"


def test_health_200_without_tokens_never_reports_ready(bed: Bed) -> None:
    bed.write_config(vllm={"start_timeout_s": 4}, standin_args=["--smoke-fail"])
    bed.start()
    assert bed.wait_exit() == 1  # a failed start: systemd sees no READY and the unit fails
    assert "READY=1" not in bed.notify.lines()
    assert any(e.get("event") == "vllm_smoke_failed" and "HTTP 500" in e["detail"] for e in bed.events())
    assert any(e.get("event") == "vllm_start_timeout" for e in bed.events())


def test_readiness_health_alone_when_configured(bed: Bed) -> None:
    bed.write_config(vllm={"readiness": "health"}, standin_args=["--smoke-fail"])
    bed.start()
    bed.notify.wait_for("READY=1")
    assert completions(bed) == []
    assert next(e for e in bed.events() if e.get("event") == "vllm_healthy")["gate"] == "health"


def test_sighup_ready_only_after_the_new_vllm_passed_the_gate(bed: Bed) -> None:
    bed.write_config(vllm={})
    bed.start()
    first_ready = bed.notify.wait_for("READY=1")
    smoke_hold = bed.base / "share" / "smoke-hold"
    smoke_hold.write_text("")
    good = bed.config.read_text()
    bed.config.write_text(good.replace('"--record"', f'"--smoke-hold-file", "{smoke_hold}", "--record"'))
    bed.signal(signal.SIGHUP)
    reloading = bed.notify.wait_for("RELOADING=1", after=first_ready)
    wait_until(lambda: len(bed.records()) == 2, "the new vLLM")
    bed.notify.wait_for("STATUS=vLLM restarting (loading): health ok, smoke completion", after=reloading)
    bed.notify.wait_for("EXTEND_TIMEOUT_USEC=", after=reloading)  # systemd's reload timeout is pushed out
    wait_until(lambda: [c for c in completions(bed) if c["code"] == 503], "a held smoke completion")
    assert "READY=1" not in bed.notify.lines()[reloading:]
    smoke_hold.unlink()
    ready = bed.notify.wait_for("READY=1", after=reloading)
    assert bed.notify.lines()[ready + 1].startswith("STATUS=serving")
    new_pid = bed.records()[1]["pid"]
    assert [c["pid"] for c in completions(bed) if c["code"] == 200][-1] == new_pid


def _prewarm_config(bed: Bed, standin_args: list[str]) -> None:
    weights = bed.base / "weights.bin"
    weights.write_bytes(os.urandom(1 << 20))
    bed.write_config(
        vllm={},
        extra=f'[prewarm]\npaths = ["{weights}"]\ninclude_model = false\n',
        standin_args=["--hold-file", str(bed.hold), *standin_args],
    )


def _warm_events(bed: Bed) -> list[dict[str, Any]]:
    return [e for e in bed.events() if e.get("event") in ("prewarm_weights_begin", "prewarm_done")]


def test_warmup_beside_a_start_without_engine_waits_only_until_vllm_serves(bed: Bed) -> None:
    """A vLLM that never starts an engine process (a stand-in, a wrapper) gives no sign of its imports: the
    weights wait while it loads, and are read once it serves, not after the two-minute fallback (the CI's fleet leg
    timed out on that)."""
    bed.hold.write_text("")
    _prewarm_config(bed, [])
    bed.start()
    wait_until(lambda: health(bed.port) == 503, "the stand-in to answer 503")
    time.sleep(1.5)  # loading, no engine process: nothing is read
    assert _warm_events(bed) == [], bed.events()
    bed.hold.unlink()
    bed.notify.wait_for("READY=1")
    done = wait_until(lambda: [e for e in _warm_events(bed) if e["event"] == "prewarm_done"], "the warm-up", 30)
    begin = next(e for e in _warm_events(bed) if e["event"] == "prewarm_weights_begin")
    assert begin["after"] == "vLLM serving" and begin["imports_done"] is False, begin
    assert float(begin["waited_s"]) < 60, begin
    assert done[0]["part"] == "weights", done


def test_warmup_beside_a_start_reads_once_the_engine_process_runs(bed: Bed) -> None:
    """vLLM's shape (the API server starts an engine process running its own interpreter): the weights are read
    while vLLM still loads."""
    bed.hold.write_text("")
    _prewarm_config(bed, ["--engine-workers", "1"])
    bed.start()
    done = wait_until(lambda: [e for e in _warm_events(bed) if e["event"] == "prewarm_done"], "the warm-up", 30)
    assert health(bed.port) == 503  # still loading
    assert "READY=1" not in bed.notify.lines()
    begin = next(e for e in _warm_events(bed) if e["event"] == "prewarm_weights_begin")
    assert begin["after"] == "imports done" and begin["imports_done"] is True, begin
    assert done[0]["part"] == "weights", done
    bed.hold.unlink()
    bed.notify.wait_for("READY=1")
