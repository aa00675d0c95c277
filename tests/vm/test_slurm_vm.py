"""Slurm across two two-NUMA Debian guests (real systemd, cgroup v2, slurm-wlm 22.05 from the image).

Guest A (``slurm-a``) runs slurmctld and slurmd, guest B (``slurm-b``) slurmd; Slurm talks over a private L2 link
between them (a second NIC on a qemu UDP socket netdev, vm.Link; 10.77.0.1 and 10.77.0.2, set with a
systemd-networkd file at set-up), the same munge key on both, ``TaskPlugin=task/cgroup,task/affinity``. From A,
a job step confined to one CPU of B (``srun -w slurm-b -c1``) is one NUMA node's CPU: the agent's topology,
lstopo, the job's ``scontrol show job -d`` CPU_IDs and ``launch --dry-run`` stay inside it, and ``launch`` runs
the stand-in vLLM on that CPU only until ``scancel``. The packaged health-check hook
(/opt/vllm-nodeagent/libexec/slurm-health) drains B when its vm.max_map_count is broken and resumes it after
``apply``, while A stays idle; a drain by someone else (reason ``ops``) is never resumed by the agent.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import pytest
from guest import wait_for
from hwloc_peer import compare, cpulist_ints, parse_view
from vm import VM, Link, timings

pytestmark = pytest.mark.vm

AGENT_CONFIG = "/etc/vllm-nodeagent/slurm.toml"
STANDIN = "/opt/standin/standin_vllm.py"
HOOK = "/opt/vllm-nodeagent/libexec/slurm-health"
NAMES = ("slurm-a", "slurm-b")
ADDR = {"slurm-a": "10.77.0.1", "slurm-b": "10.77.0.2"}
SLURM_CONF = """\
ClusterName=vmbed
SlurmctldHost=slurm-a(10.77.0.1)
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
NodeName=slurm-a NodeAddr=10.77.0.1 CPUs=2 Sockets=2 CoresPerSocket=1 ThreadsPerCore=1 State=UNKNOWN
NodeName=slurm-b NodeAddr=10.77.0.2 CPUs=2 Sockets=2 CoresPerSocket=1 ThreadsPerCore=1 State=UNKNOWN
PartitionName=bed Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
# Picks the step's NUMA node from the agent's own topology and runs the agent with the config for that node.
LAUNCH_SH = """\
#!/bin/sh
node=$(vllm-nodeagent topology --json 2>/dev/null | python3 -c \
"import json,sys; print([n['id'] for n in json.load(sys.stdin)['numa_nodes'] if n['cpus']][0])")
exec vllm-nodeagent --config /root/v$node.toml "$@"
"""
# The image has no ping: a TCP connect to sshd over the link proves ARP and IP both ways.
REACH = "import socket, sys; socket.create_connection((sys.argv[1], 22), timeout=3).close()"
WAIT = 240.0  # bounded waits under TCG on 2 cores; each ends as soon as its condition holds


def cpus_of(text: str) -> list[int]:
    out: list[int] = []
    for part in text.strip().split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def node_state(g: VM, node: str) -> tuple[str, str]:
    text = g.out(["scontrol", "show", "node", node])
    state = next(w[6:] for line in text.splitlines() for w in line.split() if w.startswith("State="))
    reason = next((line.strip()[7:] for line in text.splitlines() if line.strip().startswith("Reason=")), "")
    return state, reason


def _setup(g: VM, index: int, deb_path: Path, standin_path: Path) -> None:
    """One guest's share of the set-up, in as few guest commands as TCG makes affordable."""
    name = NAMES[index]
    _, _, mac = g.link[0].side(index) if g.link else (0, 0, "")
    g.put(deb_path, "/root/vllm-nodeagent.deb")
    g.ssh(["mkdir", "-p", "/opt/standin"])
    g.put(standin_path, STANDIN, mode="0755")
    g.out(
        f"set -e; hostname {name}; echo {name} > /etc/hostname; "
        "DEBIAN_FRONTEND=noninteractive dpkg -i /root/vllm-nodeagent.deb >/dev/null; "
        "sysctl -qw vm.max_map_count=262144; "
        "mkdir -p /var/log/slurm /var/lib/slurm/slurmctld /var/lib/slurm/slurmd; "
        "chown slurm: /var/log/slurm /var/lib/slurm/slurmctld",
        timeout=900,
    )
    g.write(
        "/etc/systemd/network/05-bedlink.network",
        f"[Match]\nMACAddress={mac}\n\n[Network]\nAddress={ADDR[name]}/24\nLinkLocalAddressing=no\n",
    )
    hosts = "127.0.0.1 localhost\n" + "".join(f"{a} {n}\n" for n, a in ADDR.items())
    g.write("/etc/hosts", hosts)
    g.write("/etc/slurm/slurm.conf", SLURM_CONF)
    g.write("/etc/slurm/cgroup.conf", "CgroupPlugin=cgroup/v2\nConstrainCores=yes\n")
    g.write(AGENT_CONFIG, '[sysctl]\n"vm.max_map_count" = 262144\n', mode="0600")
    g.write("/etc/default/vllm-nodeagent-slurm", f'AGENT_ARGS="--config {AGENT_CONFIG}"\n')
    g.write("/root/launch.sh", LAUNCH_SH, mode="0755")
    for n in (0, 1):
        g.write(
            f"/root/v{n}.toml",
            f'[vllm]\nmodel = "m"\ncommand = ["/usr/bin/python3", "{STANDIN}", "--load-seconds", "1"]\n'
            f'user = "root"\nnodes = [{n}]\n',
            mode="0600",
        )
    g.out(["networkctl", "reload"])


@pytest.fixture(scope="module")
def cluster(workdir: Path, ssh_key: Path, deb_path: Path, standin_path: Path) -> Iterator[tuple[VM, VM]]:
    link = Link()
    a, b = (VM(name, workdir, ssh_key, link=(link, i)) for i, name in enumerate(NAMES))
    try:
        t0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=2) as pool:  # both boot at once, sharing the cores
            list(pool.map(VM.start, (a, b)))
        timings["slurm_boot_2vms_s"] = time.monotonic() - t0
        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(lambda ig: _setup(ig[1], ig[0], deb_path, standin_path), enumerate((a, b))))
        # The private link carries L2 both ways before anything of Slurm starts.
        wait_for(
            "the private link (A reaches B's sshd on 10.77.0.2)",
            lambda: a.ssh(["python3", "-c", REACH, ADDR["slurm-b"]], check=False).returncode == 0,
            WAIT,
            explain=lambda: (
                a.ssh("ip -br addr; networkctl", check=False).stdout
                + b.ssh("ip -br addr; networkctl", check=False).stdout
            ),
        )
        key = a.out("base64 -w0 /etc/munge/munge.key")
        b.out(
            f"echo {shlex.quote(key)} | base64 -d > /etc/munge/munge.key; "
            "chown munge: /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key"
        )
        a.out(["systemctl", "restart", "munge", "slurmctld", "slurmd"], timeout=300)
        b.out(["systemctl", "restart", "munge", "slurmd"], timeout=300)
        logs = "tail -n 30 /var/log/slurm/slurmd.log /var/log/slurm/slurmctld.log"
        for node in NAMES:
            wait_for(
                f"{node} idle",
                lambda node=node: node_state(a, node)[0] == "IDLE",  # type: ignore[misc]
                WAIT,
                explain=lambda: a.ssh(logs, check=False).stdout + b.ssh(logs, check=False).stdout,
            )
        timings["slurm_setup_s"] = time.monotonic() - t0
        yield a, b
    finally:
        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(VM.stop, (a, b)))


def step_on_b(a: VM, script: str) -> str:
    """A one-CPU job step on slurm-b, submitted from slurm-a (the controller)."""
    return a.out(["srun", "-w", "slurm-b", "-n1", "-c1", "--quiet", "sh", "-c", script], timeout=600)


def test_20_step_on_b_is_one_numa_node(cluster: tuple[VM, VM]) -> None:
    a, _ = cluster
    out = step_on_b(
        a,
        "hostname; grep Cpus_allowed_list /proc/self/status; "
        'scontrol show job -d "$SLURM_JOB_ID" | grep -o "CPU_IDs=[0-9,-]*"; '
        "vllm-nodeagent topology --json 2>/dev/null; echo @@@; lstopo-no-graphics --of xml",
    )
    head, _, rest = out.partition("{")
    agent_text, _, xml = ("{" + rest).partition("@@@")
    host, allowed_line, cpu_ids = head.split("\n")[:3]
    allowed = cpus_of(allowed_line.split()[1])
    assert host == "slurm-b"
    assert len(allowed) == 1 and cpus_of(cpu_ids.split("=")[1]) == allowed, head
    agent = json.loads(agent_text)
    with_cpus = [n for n in agent["numa_nodes"] if n["cpus"]]
    assert [cpulist_ints(n["cpus"]) for n in with_cpus] == [allowed]  # one node's CPU, the other node's left out
    src = agent["sources"]["cpuset"]
    assert src["kind"] == "cgroup2" and "job_" in src["path"] and src["cpus_file"].endswith("cpuset.cpus.effective")
    assert compare(agent, parse_view(xml.strip())) == []


def test_21_launch_plan_inside_the_step_and_the_standin_runs_there(cluster: tuple[VM, VM]) -> None:
    a, b = cluster
    out = step_on_b(
        a,
        "grep Cpus_allowed_list /proc/self/status; /root/launch.sh launch --dry-run --json 2>/dev/null; echo @@@; "
        "node=$(vllm-nodeagent topology --json 2>/dev/null | python3 -c "
        "\"import json,sys; print([n['id'] for n in json.load(sys.stdin)['numa_nodes'] if n['cpus']][0])\"); "
        "vllm-nodeagent --config /root/v$((1 - node)).toml launch --dry-run --json 2>&1 || echo rc=$?",
    )
    first, _, rest = out.partition("\n")
    allowed = cpus_of(first.split()[1])
    plan_text, _, refused = rest.partition("@@@")
    plan = json.loads(plan_text)
    assert cpulist_ints(plan["cpus"]) == allowed and len(plan["numa_nodes"]) == 1
    assert "rc=1" in refused and "NUMA node" in refused, refused  # the other node is outside the step

    # The real launch as a step of its own on B: the stand-in runs on the step's CPU only, until scancel.
    a.out(
        "setsid nohup srun -w slurm-b -n1 -c1 --quiet --job-name=vna-launch /root/launch.sh launch "
        ">/root/launch.log 2>&1 </dev/null &"
    )
    try:

        def standin_allowed() -> Optional[str]:
            res = b.ssh(
                f"pid=$(pgrep -f -o {STANDIN}) && grep Cpus_allowed_list /proc/$pid/status "
                "&& python3 -c 'import urllib.request as u; print(u.urlopen(\"http://127.0.0.1:8000/health\").status)'",
                check=False,
            )
            return res.stdout if res.returncode == 0 and res.stdout.strip().endswith("200") else None

        got = wait_for(
            "the stand-in healthy on slurm-b", standin_allowed, WAIT, explain=lambda: a.out("cat /root/launch.log")
        )
        assert cpus_of(got.split()[1]) == allowed, got  # the plan's CPU (the launch step got the same one)
    finally:
        a.ssh(["scancel", "-n", "vna-launch"], check=False)
    wait_for("no stand-in left on slurm-b", lambda: b.ssh(["pgrep", "-f", STANDIN], check=False).returncode == 1, WAIT)


def test_22_health_check_drains_b_only_and_resumes_it(cluster: tuple[VM, VM]) -> None:
    a, b = cluster

    def drained() -> Optional[tuple[str, str]]:
        now = node_state(a, "slurm-b")
        return now if "DRAIN" in now[0] else None

    try:
        b.out(["sysctl", "-w", "vm.max_map_count=65530"])
        t0 = time.monotonic()
        _, reason = wait_for("slurm-b drained by the health check", drained, WAIT)
        timings["slurm_drain_s"] = time.monotonic() - t0
        assert reason.startswith("vllm-nodeagent: sysctl.vm.max_map_count"), reason
        assert node_state(a, "slurm-a")[0] == "IDLE"  # A's health check passes: A stays in service
        b.out(["vllm-nodeagent", "--config", AGENT_CONFIG, "apply"], timeout=300)
        wait_for("slurm-b resumed", lambda: node_state(a, "slurm-b")[0] == "IDLE", WAIT)
        t1 = time.monotonic()
        b.out([HOOK], timeout=120)
        timings["slurm_health_check_s"] = time.monotonic() - t1

        # Drained by someone else: the hook neither rewrites the reason while failing nor resumes once passing.
        a.out(["scontrol", "update", "nodename=slurm-b", "state=drain", "reason=ops"])
        res = b.ssh(
            f"sysctl -qw vm.max_map_count=65530; {HOOK}; echo @@@; sysctl -qw vm.max_map_count=262144; {HOOK}",
            timeout=300,
            check=False,
        )
        failing, _, passing = res.stdout.partition("@@@")
        state, reason = node_state(a, "slurm-b")
        assert "DRAIN" in state and reason.startswith("ops"), (state, reason, res.stdout)
        assert "drained by someone else" in failing and "sysctl.vm.max_map_count" in failing, res.stdout
        assert "passes but was drained by someone else" in passing, res.stdout
    finally:
        b.ssh(["sysctl", "-w", "vm.max_map_count=262144"], check=False)
        a.ssh(["scontrol", "update", "nodename=slurm-b", "state=resume"], check=False)
