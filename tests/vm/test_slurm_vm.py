"""Slurm in the two-NUMA Debian guest (real systemd, cgroup v2, slurm-wlm 22.05 from the image): a job step on one
CPU is one NUMA node's CPU; the agent's topology, lstopo and `launch --dry-run` stay inside it; the packaged
health-check hook (/opt/vllm-nodeagent/libexec/slurm-health) drains the node when vm.max_map_count is broken and
resumes it after `apply`.

slurmctld and slurmd run in the same guest (the guests have no network between them: qemu user networking).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest
from guest import wait_for
from hwloc_peer import compare, cpulist_ints, parse_view
from vm import VM, booted, timings

pytestmark = pytest.mark.vm

AGENT_CONFIG = "/etc/vllm-nodeagent/slurm.toml"
STANDIN = "/opt/standin/standin_vllm.py"
SLURM_CONF = """\
ClusterName=vmbed
SlurmctldHost=@HOST@(127.0.0.1)
AuthType=auth/munge
ProctrackType=proctrack/cgroup
TaskPlugin=task/cgroup,task/affinity
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
KillWait=5
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
HealthCheckProgram=/opt/vllm-nodeagent/libexec/slurm-health
HealthCheckInterval=10
HealthCheckNodeState=ANY
NodeName=@HOST@ NodeAddr=127.0.0.1 CPUs=2 Sockets=2 CoresPerSocket=1 ThreadsPerCore=1 State=UNKNOWN
PartitionName=bed Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
WAIT = 240.0  # bounded waits under TCG on 2 cores; each ends as soon as its condition holds


def cpus_of(text: str) -> list[int]:
    out: list[int] = []
    for part in text.strip().split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def node_state(g: VM) -> tuple[str, str]:
    text = g.out(["scontrol", "show", "node"])
    state = next(w[6:] for line in text.splitlines() for w in line.split() if w.startswith("State="))
    reason = next((line.strip()[7:] for line in text.splitlines() if line.strip().startswith("Reason=")), "")
    return state, reason


@pytest.fixture(scope="module")
def slurm(workdir: Path, ssh_key: Path, deb_path: Path, standin_path: Path) -> Iterator[VM]:
    for g in booted(workdir, ssh_key, "slurm"):
        t0 = time.monotonic()
        g.put(deb_path, "/root/vllm-nodeagent.deb")
        g.out("DEBIAN_FRONTEND=noninteractive dpkg -i /root/vllm-nodeagent.deb", timeout=900)
        g.write(AGENT_CONFIG, '[sysctl]\n"vm.max_map_count" = 262144\n', mode="0600")
        g.write("/etc/default/vllm-nodeagent-slurm", f'AGENT_ARGS="--config {AGENT_CONFIG}"\n')
        g.ssh(["mkdir", "-p", "/opt/standin"])
        g.put(standin_path, STANDIN, mode="0755")
        host = g.out(["hostname", "-s"])
        g.out(["sysctl", "-w", "vm.max_map_count=262144"])
        g.write("/etc/slurm/slurm.conf", SLURM_CONF.replace("@HOST@", host))
        g.write("/etc/slurm/cgroup.conf", "CgroupPlugin=cgroup/v2\nConstrainCores=yes\n")
        g.out("mkdir -p /var/log/slurm /var/lib/slurm/slurmctld /var/lib/slurm/slurmd")
        g.out("chown slurm: /var/log/slurm /var/lib/slurm/slurmctld")
        g.out(["systemctl", "restart", "munge", "slurmctld", "slurmd"], timeout=300)
        _wait_idle(g)
        timings["slurm_setup_s"] = time.monotonic() - t0
        yield g


def _wait_idle(g: VM) -> None:
    logs = "tail -n 30 /var/log/slurm/slurmd.log /var/log/slurm/slurmctld.log"
    wait_for("the node idle", lambda: node_state(g)[0] == "IDLE", WAIT, explain=lambda: g.ssh(logs, check=False).stdout)


def step(g: VM, script: str) -> str:
    return g.out(["srun", "-n1", "-c1", "--quiet", "sh", "-c", script], timeout=600)


def test_20_step_on_one_numa_node(slurm: VM) -> None:
    g = slurm
    out = step(
        g,
        "grep Cpus_allowed_list /proc/self/status; vllm-nodeagent topology --json 2>/dev/null; echo @@@; "
        "lstopo-no-graphics --of xml",
    )
    head, _, rest = out.partition("{")
    agent_text, _, xml = ("{" + rest).partition("@@@")
    allowed = cpus_of(head.split()[1])
    agent = json.loads(agent_text)
    assert len(allowed) == 1
    with_cpus = [n for n in agent["numa_nodes"] if n["cpus"]]
    assert [cpulist_ints(n["cpus"]) for n in with_cpus] == [allowed]  # one node's CPU, the other node's CPU left out
    src = agent["sources"]["cpuset"]
    assert src["kind"] == "cgroup2" and "job_" in src["path"] and src["cpus_file"].endswith("cpuset.cpus.effective")
    assert compare(agent, parse_view(xml.strip())) == []


def test_21_launch_plan_inside_the_step(slurm: VM) -> None:
    g = slurm
    for n in (0, 1):
        g.write(
            f"/root/v{n}.toml",
            f'[vllm]\nmodel = "m"\ncommand = ["/usr/bin/python3", "{STANDIN}"]\nuser = "root"\nnodes = [{n}]\n',
            mode="0600",
        )
    pick = "import json,sys; print([n['id'] for n in json.load(sys.stdin)['numa_nodes'] if n['cpus']][0])"
    out = step(
        g,
        f'node=$(vllm-nodeagent topology --json 2>/dev/null | python3 -c "{pick}"); other=$((1 - node)); '
        "grep Cpus_allowed_list /proc/self/status; echo node=$node; "
        "vllm-nodeagent --config /root/v$node.toml launch --dry-run --json 2>/dev/null; echo @@@; "
        "vllm-nodeagent --config /root/v$other.toml launch --dry-run --json 2>&1 || echo rc=$?",
    )
    lines = out.splitlines()
    allowed = cpus_of(lines[0].split()[1])
    node = int(lines[1].split("=")[1])
    plan_text, _, refused = "\n".join(lines[2:]).partition("@@@")
    plan = json.loads(plan_text)
    assert plan["numa_nodes"] == [node] and cpulist_ints(plan["cpus"]) == allowed
    assert "rc=1" in refused and f"NUMA node {1 - node}" in refused, refused  # the other node is outside the step


def test_22_health_check_drains_and_resumes(slurm: VM) -> None:
    g = slurm

    def drained() -> Optional[tuple[str, str]]:
        now = node_state(g)
        return now if "DRAIN" in now[0] else None

    try:
        g.out(["sysctl", "-w", "vm.max_map_count=65530"])
        t0 = time.monotonic()
        _, reason = wait_for("the node drained by the health check", drained, WAIT)
        timings["slurm_drain_s"] = time.monotonic() - t0
        assert reason.startswith("vllm-nodeagent: sysctl.vm.max_map_count"), reason
        g.out(["vllm-nodeagent", "--config", AGENT_CONFIG, "apply"], timeout=300)
        wait_for("the node resumed", lambda: node_state(g)[0] == "IDLE", WAIT)
        t1 = time.monotonic()
        g.out(["/opt/vllm-nodeagent/libexec/slurm-health"], timeout=120)
        timings["slurm_health_check_s"] = time.monotonic() - t1
    finally:
        g.ssh(["sysctl", "-w", "vm.max_map_count=262144"], check=False)
