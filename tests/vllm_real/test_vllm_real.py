"""Real vLLM (CPU build, its own venv named by $VLLM_VENV), end to end: the agent's real `run` daemon as root
with a NOTIFY_SOCKET read here, vLLM as `nobody` under the planned numactl binding, a tiny Llama built on the
spot. One daemon is reused across the checks in file order (each vLLM start costs ~75 s on 2 busy cores):
READY after the gate → completion → doctor → kill -9 EngineCore → kill -9 API server → SIGHUP with new args →
SIGTERM.
Run by .ci/vllm.sh (marker vllm_real; excluded from the unit command)."""

from __future__ import annotations

import json
import os
import pwd
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
from typing import Any, Optional

import pytest
from fakehost import real_accounts

from vllm_nodeagent.host import Host
from vllm_nodeagent.serving import args as vllm_args
from vllm_nodeagent.serving.env import resolve_user

REPO = Path(__file__).resolve().parents[2]
VENV = os.environ.get("VLLM_VENV", "")
START_S = 900.0  # upper bound for one vLLM start on a loaded 2-core machine; never a speed assertion
STOP_TIMEOUT_S = 30

pytestmark = [
    pytest.mark.vllm_real,
    pytest.mark.skipif(not VENV or not os.path.exists(f"{VENV}/bin/python"), reason="VLLM_VENV not set"),
    pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("numactl"), reason="needs root and numactl"),
]


def wait_until(cond: Any, what: str, timeout: float = START_S) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_free(port: int) -> bool:
    """A new vLLM could listen there (uvicorn sets SO_REUSEADDR: our clients' TIME_WAIT does not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def complete(port: int, prompt: str = "Hello", max_tokens: int = 8) -> dict[str, Any]:
    body = json.dumps({"model": "tiny", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/completions", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=120) as resp:
        return dict(json.loads(resp.read()))


def vllm_processes(root_pid: int) -> list[dict[str, Any]]:
    """The process tree under ``root_pid`` (API server, EngineCore, workers): pid, uid, name, cmdline."""
    import psutil

    try:
        procs = [psutil.Process(root_pid), *psutil.Process(root_pid).children(recursive=True)]
    except psutil.Error:
        return []
    out = []
    for p in procs:
        try:
            out.append({"pid": p.pid, "uid": p.uids().real, "name": p.name(), "cmdline": " ".join(p.cmdline())})
        except psutil.Error:
            continue
    return out


# -- the tiny model (built once per session with the vLLM venv's own transformers) -------------------------------
@pytest.fixture(scope="session")
def model_dir() -> Iterator[str]:
    base = tempfile.mkdtemp(prefix="vna-tiny-")
    os.chmod(base, 0o755)  # noqa: S103 - nobody (vLLM) reads the model
    out = os.path.join(base, "tiny-llama")
    subprocess.run(
        [f"{VENV}/bin/python", str(Path(__file__).with_name("tiny_llama.py")), out],
        check=True,
        capture_output=True,
        timeout=600,
    )
    for name in os.listdir(out):
        os.chmod(os.path.join(out, name), 0o644)  # vLLM runs as nobody
    os.chmod(out, 0o755)  # noqa: S103 - nobody (vLLM) reads the model
    yield out
    shutil.rmtree(base, ignore_errors=True)


# -- (e) the argument probe against the real parser --------------------------------------------------------------
def test_probe_real_parser_tables_and_numa_bind() -> None:
    """One probe (each costs a vLLM import): the interpreter + -m form, as nobody. Every removed flag is unknown to
    the real parser, every risky flag is accepted, --numa-bind(-nodes) are known."""
    nobody = resolve_user("nobody", Host("/"))
    risky = ["--enforce-eager", "--trust-remote-code", "--disable-custom-all-reduce"]
    assert set(risky) == set(vllm_args.RISKY_FLAGS)
    command = [f"{VENV}/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    probe_flags = (*vllm_args.REMOVED_FLAGS, *vllm_args.RISKY_FLAGS, *vllm_args.PROBE_FLAGS)
    interp, why = vllm_args.resolve_python(command)
    assert interp == f"{VENV}/bin/python", why
    r = vllm_args.probe(
        interp,
        ["--port", "8000", *risky],
        probe_flags=probe_flags,
        env={"PATH": f"{VENV}/bin:/usr/bin:/bin", "HOME": "/", "VLLM_CACHE_ROOT": "/tmp"},
        run_as=nobody,
    )
    assert r.available, r.reason
    assert r.uid == nobody.uid  # vLLM's code ran as nobody, not root
    assert r.error == "", r.error  # the risky flags parse
    assert r.version.startswith("0.")
    removed_known = [f for f in vllm_args.REMOVED_FLAGS if r.accepts[f]]
    assert removed_known == [], f"the real parser still knows {removed_known}: update REMOVED_FLAGS"
    assert all(r.accepts[f] for f in vllm_args.RISKY_FLAGS)
    assert r.accepts["--numa-bind"] and r.accepts["--numa-bind-nodes"]
    print(f"vLLM {r.version}: parser from {r.parser}")


def test_probe_console_script_resolves_and_rejects_a_removed_flag() -> None:
    """The `vllm` console script (its #! names the venv's Python): same parser, a removed flag is an error."""
    script = f"{VENV}/bin/vllm"
    if not os.path.exists(script):
        pytest.skip("no vllm console script in this venv")
    r = vllm_args.probe_for(
        [script, "serve"],
        ["--swap-space", "4"],
        path_env=f"{VENV}/bin:/usr/bin",
        env={"PATH": f"{VENV}/bin:/usr/bin:/bin", "HOME": "/tmp"},
        run_as=resolve_user("nobody", Host("/")),
    )
    assert r.available, r.reason
    assert "--swap-space" in r.error


# -- the daemon, shared across the checks below -------------------------------------------------------------------
class Agent:
    def __init__(self, model: str) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="vna-real-"))
        self.base.chmod(0o755)
        self.root = self.base / "root"
        node = self.root / "sys/devices/system/node/node0"
        node.mkdir(parents=True)
        (node / "cpulist").write_text(",".join(str(c) for c in sorted(os.sched_getaffinity(0))) + "\n")
        (node / "meminfo").write_text("Node 0 MemTotal:       8000000 kB\n")
        real_accounts(self.root, "nobody")  # the tree's accounts: vLLM really runs as the machine's nobody
        (self.root / "proc").mkdir()
        (self.root / "proc/meminfo").write_text("MemTotal: 8000000 kB\nMemAvailable: 4000000 kB\n")
        (self.root / "var/lib/node_exporter").mkdir(parents=True)
        self.metrics = self.root / "var/lib/node_exporter/metrics.prom"
        self.model = model
        self.port = free_port()
        self.config = self.base / "config.toml"
        self.log_path = self.base / "daemon.log"
        self.notify_path = str(self.base / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.notify_path)
        self.sock.setblocking(False)
        self.lines: list[str] = []
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def write_config(self, extra_args: tuple[str, ...] = ()) -> None:
        args = [
            "--port",
            str(self.port),
            "--max-model-len",
            "256",
            "--dtype",
            "bfloat16",
            "--gpu-memory-utilization",
            "0.3",
            "--served-model-name",
            "tiny",
            *extra_args,
        ]
        self.config.write_text(
            "\n".join(
                [
                    "[agent]",
                    'state_dir = "/var/lib/vllm-nodeagent"',
                    "drift_interval_s = 60",
                    'metrics_textfile = "/var/lib/node_exporter/metrics.prom"',
                    "[prewarm]",  # the default warm-up beside the start: the weights wait for vLLM's imports
                    "[vllm]",
                    f"command = {json.dumps([f'{VENV}/bin/python', '-m', 'vllm.entrypoints.openai.api_server'])}",
                    f"model = {json.dumps(self.model)}",
                    f"args = {json.dumps(args)}",
                    'user = "nobody"',
                    "nodes = [0]",
                    f'health_url = "http://127.0.0.1:{self.port}/health"',
                    f"start_timeout_s = {int(START_S)}",
                    f"stop_timeout_s = {STOP_TIMEOUT_S}",
                    "health_interval_s = 2",
                    "unhealthy_after = 2",
                    "restart_backoff_initial_s = 1",
                    "healthy_reset_s = 3600",
                ]
            )
            + "\n"
        )
        self.config.chmod(0o600)

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
        env.update({"NOTIFY_SOCKET": self.notify_path, "PYTHONPATH": str(REPO)})
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in close()
        self.t_start = time.monotonic()
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
                "run",
            ],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=str(REPO),
        )

    def notify(self) -> list[str]:
        while True:
            try:
                self.lines.extend(self.sock.recv(4096).decode().split("\n"))
            except BlockingIOError:
                return self.lines

    def wait_line(self, prefix: str, after: int = 0, timeout: float = START_S) -> int:
        def find() -> Optional[int]:
            lines = self.notify()
            return next((i + 1 for i in range(after, len(lines)) if lines[i].startswith(prefix)), None)

        return int(wait_until(find, f"{prefix!r} on NOTIFY_SOCKET", timeout)) - 1

    def events(self, name: str = "") -> list[dict[str, Any]]:
        out = []
        # vLLM shares the agent's stdout/stderr: its progress bars end in \r, so a JSON event may follow one
        for line in self.log_path.read_text(errors="replace").replace("\r", "\n").splitlines():
            start = line.find('{"')
            if start < 0:
                continue
            try:
                e = json.loads(line[start:])
            except ValueError:
                continue
            if isinstance(e, dict) and (not name or e.get("event") == name):
                out.append(e)
        return out

    def vllm_pid(self) -> int:
        return int((self.root / "var/lib/vllm-nodeagent/vllm.pid").read_text())

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.sock.close()
        if hasattr(self, "log"):
            self.log.close()


@pytest.fixture(scope="module")
def agent(model_dir: str) -> Iterator[Agent]:
    a = Agent(model_dir)
    a.write_config()
    a.start()
    try:
        yield a
    finally:
        a.close()
        print("\n".join(json.dumps(e) for e in a.events() if "binding" not in e.get("event", "")))
        shutil.rmtree(a.base, ignore_errors=True)


def test_a_ready_only_after_the_gate_then_serves(agent: Agent) -> None:
    waiting = agent.wait_line("STATUS=vLLM loading: waiting for")
    gating = agent.wait_line("STATUS=vLLM loading: health ok, smoke completion", after=waiting)
    ready = agent.wait_line("READY=1", after=gating)
    ready_s = time.monotonic() - agent.t_start
    assert agent.notify()[ready + 1].startswith("STATUS=serving")
    assert any(line.startswith("EXTEND_TIMEOUT_USEC=") for line in agent.notify()[:ready])
    smoke = agent.events("vllm_smoke_ok")
    assert smoke and "'tiny'" in smoke[0]["detail"]
    out = complete(agent.port)
    assert out["choices"][0]["text"] and out["usage"]["completion_tokens"] >= 1
    # every vLLM process (API server, EngineCore, workers) runs as nobody under the planned binding (h)
    nobody = pwd.getpwnam("nobody").pw_uid
    procs = vllm_processes(agent.vllm_pid())
    assert len(procs) >= 2, procs
    assert all(p["uid"] == nobody for p in procs), procs
    bindings = agent.events("vllm_binding")
    assert bindings and all(b["mempolicy"] == "bind:0" and b["mems"] == "0" for b in bindings), bindings
    assert not agent.events("vllm_binding_mismatch")
    # the warm-up saw real vLLM's imports end (its engine core started), not the two-minute fallback
    begin = agent.events("prewarm_weights_begin")
    assert begin and begin[0]["imports_done"] is True, begin
    parts = [e["part"] for e in agent.events("prewarm_done")]
    assert parts[:1] == ["weights"], parts
    print(
        f"MEASURED agent start -> READY (real vLLM, gate passed): {ready_s:.1f} s; weights warm-up waited "
        f"{begin[0]['waited_s']} s for vLLM's imports"
    )


def test_g_doctor_sees_version_and_live_binding(agent: Agent) -> None:
    agent.wait_line("READY=1")
    cache = agent.root / "var/lib/vllm-nodeagent/vllm-probe-cache.json"
    before = cache.stat()
    # doctor under --root reads the tree's /proc (the container case: the host's root at /host, its real /proc
    # at /host/proc); this tree's /proc is a fixture holding sysctls only, while vLLM runs for real. So doctor
    # runs in a private mount namespace where the tree's /proc is the real one: the live binding it reads is the
    # real vLLM's, and the daemon beside it keeps its fixture.
    r = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "bash",
            "-c",
            'mount --bind /proc "$0" && exec "$@"',
            str(agent.root / "proc"),
            sys.executable,
            "-m",
            "vllm_nodeagent.cli",
            "--root",
            str(agent.root),
            "--config",
            str(agent.config),
            "doctor",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    # doctor's probe was the daemon's, from the cache: no second vLLM import, the entry not rewritten
    assert (cache.stat().st_ino, cache.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    checks = {c["id"]: c for c in json.loads(r.stdout)["checks"]}
    assert checks["vllm.args"]["status"] == "pass" and checks["vllm.args"]["current"].startswith("vLLM 0."), checks
    # the program the daemon exec'd, found by the start's own lookup (serving/env.program_path)
    prog = checks["vllm.program"]
    assert prog["status"] == "pass" and prog["current"] == f"{VENV}/bin/python", prog
    b = checks["vllm.binding"]
    assert b["status"] == "pass" and "from the daemon's plan" in b["desired"], b
    for p in vllm_processes(agent.vllm_pid()):
        assert f"{p['pid']}: cpus" in b["current"], (p, b)


def test_c_kill_engine_core_restarts_with_backoff(agent: Agent) -> None:
    first = agent.wait_line("READY=1")
    old_pid = agent.vllm_pid()
    engine = [p for p in vllm_processes(old_pid) if "EngineCore" in p["name"] or "EngineCore" in p["cmdline"]]
    assert engine, vllm_processes(old_pid)
    os.kill(engine[0]["pid"], signal.SIGKILL)
    exited = agent.wait_line("STATUS=vLLM exited 1x in a row", after=first, timeout=120)
    text = wait_until(
        lambda: "vllm_nodeagent_vllm_restarts_total 1.0" in agent.metrics.read_text() and agent.metrics.read_text(),
        "the restart in the metrics textfile",
        60,
    )
    assert "vllm_nodeagent_vllm_up 0.0" in text
    again = agent.wait_line("READY=1", after=exited)
    assert agent.notify()[again + 1].startswith("STATUS=serving")
    assert agent.vllm_pid() != old_pid
    ev = agent.events("vllm_exited")
    assert ev and ev[0]["restart_in_s"] == 1.0
    # the restart re-used the plan: the argument probe (a vLLM import) ran once, at the first start
    assert len(agent.events("vllm_probe_ran")) == 1
    smoke = agent.events("vllm_smoke_ok")
    assert len(smoke) >= 2 and smoke[-1]["pid"] == agent.vllm_pid()
    assert "vllm_nodeagent_vllm_up 1.0" in agent.metrics.read_text()
    assert complete(agent.port)["choices"][0]["text"]


def test_e_kill_9_of_the_api_server_leaves_no_engine_core_behind(agent: Agent) -> None:
    """Issue 22: kill -9 of the API server (the group's leader); its EngineCore must not outlive the restart (it
    would hold the memory and the GPU on a real node). One extra vLLM start: the leg's added time is printed."""
    t0 = time.monotonic()
    agent.wait_line("READY=1")
    old_pid = agent.vllm_pid()
    others = [p for p in vllm_processes(old_pid) if p["pid"] != old_pid]
    assert any("EngineCore" in p["name"] or "EngineCore" in p["cmdline"] for p in others), others
    mark = len(agent.notify())
    os.kill(old_pid, signal.SIGKILL)
    exited = agent.wait_line("STATUS=vLLM exited", after=mark, timeout=120)
    agent.wait_line("READY=1", after=exited)
    assert agent.vllm_pid() != old_pid
    import psutil

    left = [p for p in others if psutil.pid_exists(p["pid"]) and psutil.Process(p["pid"]).status() != "zombie"]
    assert left == [], left
    ended = [e for e in agent.events("vllm_leftovers") if e["pgid"] == old_pid]
    print(f"MEASURED kill -9 API server -> READY again: {time.monotonic() - t0:.1f} s; the agent ended {ended}")
    assert complete(agent.port)["choices"][0]["text"]


def test_d_sighup_ready_only_after_the_new_vllm_passed_the_gate(agent: Agent) -> None:
    agent.wait_line("READY=1")
    old_pid = agent.vllm_pid()
    start = len(agent.notify())
    agent.write_config(extra_args=("--max-num-seqs", "4"))
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGHUP)
    reloading = agent.wait_line("RELOADING=1", after=start, timeout=60)
    ready = agent.wait_line("READY=1", after=reloading)
    new_pid = agent.vllm_pid()
    assert new_pid != old_pid
    lines = agent.notify()[reloading:ready]
    assert any(line.startswith("STATUS=vLLM restarting (loading): health ok, smoke completion") for line in lines)
    started = [e for e in agent.events("vllm_started") if e["pid"] == new_pid]
    assert started and "--max-num-seqs" in started[0]["argv"]
    # changed args are not answered from the probe cache: the real parser was asked again
    assert [e["reason"] for e in agent.events("vllm_probe_cache_miss")][-1] == "inputs changed: args"
    assert len(agent.events("vllm_probe_ran")) == 2
    assert [e for e in agent.events("vllm_smoke_ok") if e["pid"] == new_pid]
    assert complete(agent.port)["choices"][0]["text"]


def test_b_sigterm_stops_every_vllm_process(agent: Agent) -> None:
    agent.wait_line("READY=1")
    procs = vllm_processes(agent.vllm_pid())
    assert agent.proc is not None
    t0 = time.monotonic()
    agent.proc.send_signal(signal.SIGTERM)
    rc = agent.proc.wait(timeout=STOP_TIMEOUT_S + 30)
    stop_s = time.monotonic() - t0
    assert rc == 0
    import psutil

    alive = [p for p in procs if psutil.pid_exists(p["pid"]) and psutil.Process(p["pid"]).status() != "zombie"]
    assert alive == [], alive
    assert port_free(agent.port)
    assert "STOPPING=1" in agent.notify()
    assert stop_s < STOP_TIMEOUT_S + 10, stop_s  # within stop_timeout_s (+ the agent's own exit)
    print(f"MEASURED SIGTERM -> agent exit with every vLLM process gone: {stop_s:.1f} s")
