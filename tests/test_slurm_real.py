"""A real Slurm (Debian's slurm-wlm 22.05: slurmctld, slurmd, munge) on this machine, one node: a job step confined
to one CPU sees only that CPU (topology --json, lstopo, launch --dry-run, the stand-in vLLM's own affinity), the
step's vLLM stops with the step, and doctor as HealthCheckProgram drains the node when a setting on the real
kernel is broken and resumes it after ``apply`` (a drain by someone else stays).

Run by .ci/run's Slurm leg: ``VNA_SLURM=1 pytest -m slurm tests/test_slurm_real.py`` as root (it starts its own
daemons on spare ports and stops them; it changes vm.max_map_count under /tmp/vna-realhost.lock and restores it).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

REPO = Path(__file__).resolve().parent.parent
STANDIN = REPO / "tests" / "standin_vllm.py"
MAP_COUNT = Path("/proc/sys/vm/max_map_count")
FLOOR = 262144

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(os.environ.get("VNA_SLURM") != "1", reason="the Slurm leg: set VNA_SLURM=1 (.ci/run does)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="starts slurmd/slurmctld: root only"),
    pytest.mark.skipif(shutil.which("slurmctld") is None, reason="apt-get install slurm-wlm munge"),
]


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


@dataclass
class Cluster:
    base: Path
    node: str
    env: dict[str, str]
    agent_config: Path
    health_log: Path

    def run(self, *argv: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(list(argv), env=self.env, capture_output=True, text=True, timeout=timeout, cwd=self.base)
        if check and res.returncode != 0:
            raise AssertionError(f"{argv}: rc {res.returncode}\n{res.stdout}\n{res.stderr}")
        return res

    def node_state(self) -> tuple[str, str]:
        out = self.run("scontrol", "show", "node", self.node).stdout
        state = next(w.split("=", 1)[1] for line in out.splitlines() for w in line.split() if w.startswith("State="))
        reason = next((line.strip()[7:] for line in out.splitlines() if line.strip().startswith("Reason=")), "")
        return state, reason

    def agent(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "vllm_nodeagent.cli", "--config", str(self.agent_config), *args]


def _cgroup_conf() -> str:
    if Path("/sys/fs/cgroup/cgroup.controllers").exists():  # pure cgroup v2; no systemd as PID 1 to ask
        return "CgroupPlugin=cgroup/v2\nIgnoreSystemd=yes\nConstrainCores=yes\n"
    return "CgroupPlugin=cgroup/v1\nConstrainCores=yes\n"


def _munge_alive() -> bool:
    return subprocess.run(["munge", "-n"], capture_output=True, timeout=10).returncode == 0


def _stop(pidfile: Path) -> None:
    with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
        pid = int(pidfile.read_text().strip())
        os.kill(pid, signal.SIGTERM)
        for _ in range(40):
            os.kill(pid, 0)
            time.sleep(0.25)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("slurm")
    base.chmod(0o755)
    node = socket.gethostname().split(".", 1)[0]
    cpus = len(os.sched_getaffinity(0))
    state = base / "agent-state"
    agent_config = base / "agent.toml"
    agent_config.write_text(f'[agent]\nstate_dir = "{state}"\n\n[sysctl]\n"vm.max_map_count" = {FLOOR}\n')
    agent_config.chmod(0o600)
    health_log = base / "health.log"
    conf = base / "slurm.conf"
    hook = base / "health.sh"
    # What packaging/slurm/vllm-nodeagent-slurm-health does, with this checkout's agent and this test's config.
    hook.write_text(
        "#!/bin/sh\n"
        f"export SLURM_CONF={conf} PYTHONPATH={REPO} PATH=/usr/sbin:/usr/bin:/sbin:/bin\n"
        "start=$(date +%s%N)\n"
        f"{sys.executable} -m vllm_nodeagent.cli --config {agent_config} doctor --slurm >> {health_log} 2>&1\n"
        f'echo "rc=$? node=$SLURMD_NODENAME wall_ms=$(( ($(date +%s%N) - start) / 1000000 ))" >> {health_log}\n'
    )
    hook.chmod(0o755)
    for d in ("ctld", "d"):
        (base / d).mkdir()
    conf.write_text(
        f"ClusterName=vnatest\nSlurmctldHost={node}\nSlurmctldPort=16817\nSlurmdPort=16818\n"
        "AuthType=auth/munge\nSlurmUser=root\nSlurmdUser=root\n"
        f"StateSaveLocation={base}/ctld\nSlurmdSpoolDir={base}/d\n"
        f"SlurmctldPidFile={base}/slurmctld.pid\nSlurmdPidFile={base}/slurmd.pid\n"
        f"SlurmctldLogFile={base}/slurmctld.log\nSlurmdLogFile={base}/slurmd.log\n"
        "ProctrackType=proctrack/cgroup\nTaskPlugin=task/cgroup,task/affinity\n"
        "SelectType=select/cons_tres\nSelectTypeParameters=CR_Core\nReturnToService=2\nMpiDefault=none\n"
        "KillWait=5\nInactiveLimit=0\nSlurmdTimeout=60\n"
        f"HealthCheckProgram={hook}\nHealthCheckInterval=5\nHealthCheckNodeState=ANY\n"
        f"NodeName={node} CPUs={cpus} State=UNKNOWN\n"
        "PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP\n"
    )
    (base / "cgroup.conf").write_text(_cgroup_conf())
    env = {**os.environ, "SLURM_CONF": str(conf), "PYTHONPATH": str(REPO)}
    started_munge = False
    if not _munge_alive():
        for d in ("/run/munge", "/var/log/munge", "/var/lib/munge"):
            Path(d).mkdir(parents=True, exist_ok=True)
            shutil.chown(d, "munge", "munge")
        subprocess.run(["runuser", "-u", "munge", "--", "munged"], check=True, timeout=30)
        started_munge = True
        wait_for("munged", _munge_alive, 20)
    orig_map_count = MAP_COUNT.read_text()
    lock = open("/tmp/vna-realhost.lock", "w")  # noqa: SIM115 - held for the module, closed below
    fcntl.flock(lock, fcntl.LOCK_EX)  # the health check reads vm.max_map_count, which the drain test changes
    try:
        MAP_COUNT.write_text(str(max(FLOOR, int(orig_map_count))))  # healthy to begin with
        subprocess.run(["slurmctld"], env=env, check=True, timeout=60)
        subprocess.run(["slurmd"], env=env, check=True, timeout=60)
        c = Cluster(base, node, env, agent_config, health_log)
        wait_for("the node to be idle", lambda: c.node_state()[0] == "IDLE", 90)
        yield c
    finally:
        _stop(base / "slurmd.pid")
        _stop(base / "slurmctld.pid")
        MAP_COUNT.write_text(orig_map_count)
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
        if started_munge:
            _stop(Path("/run/munge/munged.pid"))


def step(c: Cluster, script: str, timeout: float = 120) -> str:
    """One task on one CPU; ``script`` runs in sh inside the step."""
    return c.run("srun", "-n1", "-c1", "--quiet", "sh", "-c", script, timeout=timeout).stdout


def cpulist(text: str) -> list[int]:
    out: list[int] = []
    for part in text.strip().split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def test_step_topology_is_the_steps_cpuset(cluster: Cluster) -> None:
    py = f"{sys.executable} -m vllm_nodeagent.cli"
    pick = "import json,sys; print(json.load(sys.stdin)['sources']['cpuset']['cpus_file'])"
    out = step(
        cluster,
        "echo path=$(cat /proc/self/cpuset); grep Cpus_allowed_list /proc/self/status; "
        f'out=$({py} topology --json 2>/dev/null); echo "$out"; echo @@@; '
        f'cat "$(echo "$out" | {sys.executable} -c "{pick}")"',  # the file the agent names, read in the step
    )
    head, _, rest = out.partition("{")
    agent_json, _, file_text = ("{" + rest).partition("@@@")
    data = json.loads(agent_json)
    path = next(line[5:] for line in head.splitlines() if line.startswith("path="))
    allowed = cpulist(next(line.split()[1] for line in head.splitlines() if line.startswith("Cpus_allowed_list")))
    usable = sorted(c for n in data["numa_nodes"] for c in cpulist(n["cpus"]) if n["cpus"])  # v1: cpulist strings
    assert len(allowed) == 1, f"the step was not confined to one CPU: {allowed}"
    assert usable == allowed
    src = data["sources"]["cpuset"]
    assert src["path"] == path and path.endswith("/step_0") and "job_" in path
    assert Path(src["cpus_file"]).parent.name == "step_0"
    assert cpulist(file_text) == allowed
    others = [e for e in data["excluded"] if e["what"] == "cpu"]
    assert len(allowed) == len(os.sched_getaffinity(0)) or (others and src["cpus_file"] in others[0]["reason"])


def test_step_agrees_with_lstopo(cluster: Cluster) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    from hwloc_peer import LSTOPO, compare, parse_view

    if shutil.which(LSTOPO) is None:
        pytest.skip("hwloc-nox not installed")
    py = f"{sys.executable} -m vllm_nodeagent.cli"
    out = step(cluster, f"{py} topology --json 2>/dev/null; echo '@@@'; {LSTOPO} --of xml")
    agent, _, xml = out.partition("@@@")
    assert compare(json.loads(agent), parse_view(xml.strip())) == []


def _launch_config(c: Cluster, port: int, record: Path) -> Path:
    cfg = c.base / "launch.toml"
    cfg.write_text(
        f'[agent]\nstate_dir = "{c.base / "launch-state"}"\n\n[vllm]\n'
        f'command = ["{sys.executable}", "{STANDIN}"]\nmodel = "standin-model"\n'
        f'args = ["--port", "{port}", "--record", "{record}", "--workers", "1"]\nuser = "root"\n'
        f'health_url = "http://127.0.0.1:{port}/health"\nnodes = [0]\nstart_timeout_s = 60\nstop_timeout_s = 5\n'
    )
    cfg.chmod(0o600)
    return cfg


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_step_launch_plan_stays_inside(cluster: Cluster) -> None:
    cfg = _launch_config(cluster, _free_port(), cluster.base / "dry.jsonl")
    py = f"{sys.executable} -m vllm_nodeagent.cli --config {cfg}"
    out = step(cluster, f"grep Cpus_allowed_list /proc/self/status; {py} launch --dry-run --json 2>/dev/null")
    head, _, rest = out.partition("{")
    allowed = cpulist(head.split()[1])
    plan = json.loads("{" + rest)
    assert plan["cpus"] and set(cpulist(plan["cpus"])) <= set(allowed), (plan["cpus"], allowed)  # v1: a cpulist
    assert plan["numa_nodes"] == [0] and plan["binding"], plan


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].startswith("Z")


def test_standin_runs_inside_and_stops_with_the_step(cluster: Cluster) -> None:
    record = cluster.base / "record.jsonl"
    cfg = _launch_config(cluster, _free_port(), record)
    agent = [sys.executable, "-m", "vllm_nodeagent.cli", "--config", str(cfg), "launch"]
    log = open(cluster.base / "launch.log", "w")  # noqa: SIM115 - closed below
    srun = subprocess.Popen(
        ["srun", "-n1", "-c1", "--quiet", "--job-name=vna-launch", *agent],
        env=cluster.env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=cluster.base,
    )
    try:

        def started() -> Optional[list[dict[str, Any]]]:
            rows = [json.loads(x) for x in record.read_text().splitlines()] if record.exists() else []
            procs = [r for r in rows if r.get("role") in ("server", "worker")]  # not the smoke's completion rows
            return procs if len(procs) >= 2 else None

        rows: list[dict[str, Any]] = wait_for("the stand-in's start and its worker", started, 90)
        job = cluster.run("squeue", "-h", "-n", "vna-launch", "-o", "%i").stdout.split()
        assert len(job) == 1
        allowed = cpulist(cluster.run("scontrol", "show", "job", "-d", job[0]).stdout.split("CPU_IDs=")[1].split()[0])
        for r in rows:  # the server and its worker run on the step's CPU only
            assert set(cpulist(r["Cpus_allowed_list"])) <= set(allowed), (r, allowed)
        pids = [int(r["pid"]) for r in rows]
        cluster.run("scancel", job[0])
        srun.wait(timeout=60)
        wait_for("the stand-in and its worker to be gone", lambda: not any(_pid_alive(p) for p in pids), 60)
    finally:
        if srun.poll() is None:
            srun.kill()
            srun.wait()
        log.close()
        print((cluster.base / "launch.log").read_text()[-3000:])


def _health_runs(c: Cluster) -> int:
    return c.health_log.read_text().count("rc=") if c.health_log.exists() else 0


def test_health_check_drains_and_resumes(cluster: Cluster) -> None:
    wait_for("a health check run", lambda: _health_runs(cluster) >= 1, 30)
    wait_for("the node idle (the last job completed)", lambda: cluster.node_state()[0] == "IDLE", 60)
    try:
        MAP_COUNT.write_text(str(FLOOR - 1000))  # below the configured floor: doctor FAILs

        def drained() -> Optional[tuple[str, str]]:
            now = cluster.node_state()
            return now if "DRAIN" in now[0] else None

        _, reason = wait_for("the node drained", drained, 60)
        assert reason.startswith("vllm-nodeagent: sysctl.vm.max_map_count"), reason
        cluster.run(*cluster.agent("apply"))
        assert int(MAP_COUNT.read_text()) >= FLOOR
        wait_for("the node resumed", lambda: cluster.node_state()[0] == "IDLE", 60)
        log = cluster.health_log.read_text()
        assert f"node {cluster.node} drained: vllm-nodeagent: sysctl.vm.max_map_count" in log
        assert f"node {cluster.node} resumed" in log
        assert f"node={cluster.node} " in log  # slurmd gives the health check SLURMD_NODENAME
    finally:
        MAP_COUNT.write_text(str(FLOOR))


def test_a_drain_by_someone_else_stays(cluster: Cluster) -> None:
    cluster.run("scontrol", "update", f"nodename={cluster.node}", "state=drain", "reason=admin: bad DIMM")
    try:
        runs = _health_runs(cluster)
        wait_for("two more health check runs", lambda: _health_runs(cluster) >= runs + 2, 30)
        state, reason = cluster.node_state()
        assert "DRAIN" in state and reason.startswith("admin: bad DIMM")
        assert "drained by someone else" in cluster.health_log.read_text()
    finally:
        cluster.run("scontrol", "update", f"nodename={cluster.node}", "state=resume")


def test_health_check_wall_time(cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    """Reported, never asserted against a number (charter): slurmd kills a health check after 60 s."""
    log = cluster.health_log.read_text().splitlines()
    walls = [int(line.rsplit("wall_ms=", 1)[1]) / 1000 for line in log if "wall_ms=" in line]
    assert walls
    with capsys.disabled():
        print(f"\nhealth check wall time over {len(walls)} runs: max {max(walls):.2f} s, min {min(walls):.2f} s")
    out: Optional[str] = os.environ.get("VNA_SLURM_TIMES")
    if out:
        Path(out).write_text(json.dumps({"health_check_wall_s": walls}))
