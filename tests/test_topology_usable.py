"""Usable topology on trees shaped like real machines (issue #14): cgroup jobs, offline CPUs, cpumap-only nodes,
GPU memory as a node, boards without PCI locality, kernels that pad with NULs, malformed files."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import HOSTS, opener_for, unavailable_opener
from fakehost import FakeHost, SysfsHost
from jsoncontract import legacy_topology
from nvml_double import NvmlDouble

from vllm_nodeagent import cli
from vllm_nodeagent.config import VllmConfig
from vllm_nodeagent.host import Host
from vllm_nodeagent.host.parse import (
    normalize_pci_bus_id,
    parse_cpulist,
    parse_cpumask,
    parse_nvidia_numa_status,
    status_field,
)
from vllm_nodeagent.serving.env import LaunchError, RunAs
from vllm_nodeagent.serving.plan import plan
from vllm_nodeagent.topology import Topology, discover, render_table

WHO = RunAs("vllm", 999, 999, [999], "/var/lib/vllm", switch=True)
NUMACTL = "/usr/bin/numactl"
CONFIG = (Path(__file__).resolve().parent.parent / "etc/config.toml").read_text()


def build(name: str, tmp_path: Path) -> FakeHost:
    return HOSTS[name](tmp_path / name)


def topo_of(h: FakeHost) -> Topology:
    return discover(Host(h.root))


def as_json(h: FakeHost, capsys: pytest.CaptureFixture[str], opener: object = unavailable_opener) -> dict[str, Any]:
    rc = cli.main(["--root", str(h.root), "topology", "--json"], nvml_opener=opener)  # type: ignore[arg-type]
    assert rc == 0
    return legacy_topology(json.loads(capsys.readouterr().out))


def doctor(h: FakeHost, capsys: pytest.CaptureFixture[str], opener: object = unavailable_opener) -> dict[str, Any]:
    cfg = h.root / "doctor.toml"
    cfg.write_text(CONFIG)
    cfg.chmod(0o600)
    rc = cli.main(
        ["--root", str(h.root), "--config", str(cfg), "doctor", "--json"], nvml_opener=opener, host_cls=SysfsHost
    )  # type: ignore[arg-type]
    assert rc in (0, 1)  # a verdict, never a crash
    return {c["id"]: c for c in json.loads(capsys.readouterr().out)["checks"]}


def cfg(**kw: object) -> VllmConfig:
    base: dict[str, object] = {"model": "org/model"}
    base.update(kw)
    return VllmConfig(**base)  # type: ignore[arg-type]


# -- parsers ----------------------------------------------------------------------------------------------------
def test_parsers_tolerate_kernel_padding() -> None:
    assert parse_cpulist("0-3\n\x00") == [0, 1, 2, 3]
    assert parse_cpulist(" 0-1,4\x00\x00") == [0, 1, 4]
    assert parse_cpumask("0000000f\n\x00") == [0, 1, 2, 3]
    assert status_field("Name:\tx\nCpus_allowed_list:\t0-5\nMems_allowed_list:\t0\n", "Cpus_allowed_list") == "0-5"
    assert status_field("Name:\tx\n", "Cpus_allowed_list") is None
    assert parse_nvidia_numa_status("Node:      1\nStatus:    online\nAddress:   400000000000\n") == (1, "online")
    assert parse_nvidia_numa_status("Node:      -1\nStatus:    disabled\n") == (-1, "disabled")
    assert normalize_pci_bus_id("00010000:01:00.0") == "10000:01:00.0"  # VMD: 5 hex digits of domain


# -- a Slurm job step's cgroup ------------------------------------------------------------------------------------
def test_cgroup_v2_job_sees_only_its_cpuset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    h = build("slurm_cgroup_v2_job", tmp_path)
    topo = as_json(h, capsys)
    assert [n["id"] for n in topo["numa_nodes"]] == [0, 1, 2, 3, 4, 5]
    assert [n["cpus"] for n in topo["numa_nodes"]] == [[0, 1, 2, 3], [4, 5], [], [], [], []]
    (cpus,) = [e for e in topo["excluded"] if e["what"] == "cpu"]
    assert cpus["ids"] == list(range(6, 32)) and "cpuset.cpus.effective = 0-5" in cpus["reason"]
    (nodes,) = [e for e in topo["excluded"] if e["what"] == "node"]
    assert nodes["ids"] == [6, 7] and "cpuset.mems.effective = 0-5" in nodes["reason"]
    gpu0, gpu1 = topo["gpus"]
    assert gpu0["numa_node"] == 0 and gpu0["no_locality"] == ""
    assert gpu1["numa_node"] == -1 and "numa_node 6 is not usable" in gpu1["no_locality"]
    table = render_table(topo_of(h))
    assert "excluded CPUs 6-31: not in the cgroup's cpuset" in table
    assert "excluded nodes 6-7: not in the cgroup's memory nodes" in table


def test_cgroup_job_launch_binds_only_usable_nodes(tmp_path: Path) -> None:
    topo = topo_of(build("slurm_cgroup_v2_job", tmp_path))
    p = plan(cfg(gpus=[0]), topo, run_as=WHO, numactl=NUMACTL)
    assert p.argv[:3] == [NUMACTL, "--cpunodebind=0", "--membind=0"] and p.cpus == [0, 1, 2, 3]
    p = plan(cfg(), topo, run_as=WHO, numactl=NUMACTL)  # GPU1's node is outside the job: no confident bind
    assert p.binding == "none" and p.argv[0] == "vllm"
    assert any("GPU1 has no NUMA locality" in n for n in p.notes)
    with pytest.raises(LaunchError, match="NUMA node 6 is not usable: not in the cgroup's memory nodes"):
        plan(cfg(nodes=[6]), topo, run_as=WHO, numactl=NUMACTL)
    with pytest.raises(LaunchError, match="NUMA node 3 is a cpu node without usable CPUs"):
        plan(cfg(nodes=[3]), topo, run_as=WHO, numactl=NUMACTL)


def test_cgroup_v1_and_a_narrower_affinity(tmp_path: Path) -> None:
    h = FakeHost(tmp_path / "v1")
    h.cpus(8)
    h.numa_node(0, [0, 1, 2, 3], 1024)
    h.numa_node(1, [4, 5, 6, 7], 1024)
    h.cgroup_v1("/slurm/uid_1000/job_7/step_0", "0-5", "0-1")
    h.allowed("0-4", "0-1")  # taskset narrowed the process inside its cgroup
    topo = topo_of(h)
    assert [n.cpus for n in topo.numa_nodes] == [[0, 1, 2, 3], [4]]
    reasons = {tuple(e.ids): e.reason for e in topo.excluded}
    assert "cpuset.effective_cpus = 0-5" in reasons[(6, 7)]
    assert "Cpus_allowed_list 0-4 (/proc/self/status)" in reasons[(5,)]
    assert topo.problems == []


def test_affinity_wider_than_the_cgroup_warns(tmp_path: Path) -> None:
    h = FakeHost(tmp_path / "odd")
    h.cpus(4)
    h.numa_node(0, [0, 1, 2, 3], 1024)
    h.cgroup_v2("/job", "0-1", "0")
    h.allowed("0-3", "0")
    topo = topo_of(h)
    assert topo.numa_nodes[0].cpus == [0, 1]
    assert any("Cpus_allowed_list 0-3" in w and "not within" in w for w in topo.problems)


def test_cgroup_v2_controller_enabled_only_higher_up(tmp_path: Path) -> None:
    h = FakeHost(tmp_path / "up")
    h.cpus(4)
    h.numa_node(0, [0, 1, 2, 3], 1024)
    h.cgroup_v2("/job", "0-2", "0")
    h.write("/proc/self/cgroup", "0::/job/step/task")  # no cpuset files below /job: its bound applies
    assert topo_of(h).numa_nodes[0].cpus == [0, 1, 2]


# -- offline CPUs, memory-only and cpumap-only nodes --------------------------------------------------------------
def test_offline_cpus_left_out_and_cxl_node_is_memory_only(tmp_path: Path) -> None:
    topo = topo_of(build("offline_cpus_with_cxl", tmp_path))
    assert [(n.id, n.kind, n.cpus) for n in topo.numa_nodes] == [
        (0, "cpu", [0, 1, 2, 3, 4, 5]),
        (1, "cpu", [8, 9, 10, 11, 12, 13]),
        (2, "memory", []),
    ]
    (off,) = topo.excluded
    assert off.ids == [6, 7, 14, 15] and off.reason.startswith("offline")
    assert [g.local_cpus for g in topo.gpus] == [[0, 1, 2, 3, 4, 5], [8, 9, 10, 11, 12, 13]]
    assert [n.id for n in topo.cpu_nodes()] == [0, 1]
    with pytest.raises(LaunchError, match="NUMA node 2 is a memory node"):
        plan(cfg(nodes=[2]), topo, run_as=WHO, numactl=NUMACTL)


def test_cpumap_only_node(tmp_path: Path) -> None:
    topo = topo_of(build("cpumap_only", tmp_path))
    assert [n.cpus for n in topo.numa_nodes] == [list(range(8)), list(range(8, 16))]
    assert topo.gpus[0].numa_node == 1 and topo.problems == []


# -- GPU memory as a NUMA node -----------------------------------------------------------------------------------
def test_gh200_gpu_memory_node_linked_never_bound(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    h = build("gh200_like", tmp_path)
    topo = topo_of(h)
    assert [(n.id, n.kind, n.gpu) for n in topo.numa_nodes] == [(0, "cpu", ""), (1, "gpu-memory", "0009:01:00.0")]
    (gpu,) = topo.gpus
    assert (gpu.pci_bus_id, gpu.numa_node, gpu.memory_node) == ("0009:01:00.0", 0, 1)
    p = plan(cfg(), topo, run_as=WHO, numactl=NUMACTL)
    assert p.argv[:3] == [NUMACTL, "--cpunodebind=0", "--membind=0"]
    with pytest.raises(LaunchError, match=re.escape("NUMA node 1 is the memory of GPU 0009:01:00.0")):
        plan(cfg(nodes=[1]), topo, run_as=WHO, numactl=NUMACTL)
    assert "GPU memory (0009:01:00.0)" in render_table(topo)
    checks = doctor(h, capsys)
    assert "node1:gpu-memory(0009:01:00.0)" in checks["topology.numa"]["current"]


def test_gh200_link_from_nvml_when_the_driver_file_is_absent(tmp_path: Path) -> None:
    h = build("gh200_like", tmp_path)
    (h.root / "proc/driver/nvidia/gpus/0009:01:00.0/numa_status").unlink()
    assert topo_of(h).numa_nodes[1].kind == "memory"  # nothing says whose memory it is
    rec = {
        "driver_version": "580.82.07",
        "devices": [
            {
                "bus_id": "00000009:01:00.0",
                "name": "NVIDIA GH200 480GB",
                "uuid": "GPU-gh200",
                "memory_affinity_nodes": [0, 1],  # the GPU-memory node is never taken for the GPU's locality
                "cpu_affinity": list(range(72)),
                "gpu_memory_node": 1,
            }
        ],
    }
    with cli_nvml(rec) as nvml:
        topo = discover(Host(h.root), nvml)
    assert topo.numa_nodes[1].kind == "gpu-memory" and topo.numa_nodes[1].gpu == "0009:01:00.0"
    assert (topo.gpus[0].numa_node, topo.gpus[0].memory_node, topo.gpus[0].source) == (0, 1, "nvml")


def cli_nvml(rec: dict[str, Any]) -> Any:
    return opener_for(NvmlDouble(rec))()


# -- locality without evidence ---------------------------------------------------------------------------------------
def test_no_pci_locality_is_none_not_node_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    h = build("no_pci_locality", tmp_path)
    topo = topo_of(h)
    (gpu,) = topo.gpus
    assert gpu.numa_node == -1 and "span nodes 0-1" in gpu.no_locality
    assert topo.nics[0].numa_node == -1
    p = plan(cfg(), topo, run_as=WHO, numactl=NUMACTL)
    assert p.binding == "none" and p.argv[0] == "vllm" and p.numa_nodes == []
    check = doctor(h, capsys)["topology.gpu_numa"]
    assert check["status"] == "warn" and "GPU0 is launched without a NUMA binding" in check["detail"]


def test_nvml_affinity_spanning_nodes_is_no_locality(tmp_path: Path) -> None:
    h = build("no_pci_locality", tmp_path)
    rec = {
        "driver_version": "580.82.07",
        "devices": [
            {
                "bus_id": "00000000:41:00.0",
                "name": "NVIDIA L40S",
                "uuid": "GPU-l40s",
                "memory_affinity_nodes": [0, 1],
                "cpu_affinity": list(range(16)),
            }
        ],
    }
    with cli_nvml(rec) as nvml:
        (gpu,) = discover(Host(h.root), nvml).gpus
    assert gpu.numa_node == -1 and "spans nodes 0-1" in gpu.no_locality


# -- tolerant parsing -----------------------------------------------------------------------------------------------
def test_trailing_nul_kernel(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    h = build("trailing_nul_arm64", tmp_path)
    topo = as_json(h, capsys)
    assert [n["cpus"] for n in topo["numa_nodes"]] == [list(range(64)), list(range(64, 128))]
    assert topo["gpus"][0]["numa_node"] == 1 and topo["gpus"][0]["local_cpus"] == list(range(64, 128))
    assert topo["problems"] == []
    assert doctor(h, capsys)["topology.numa"]["status"] == "pass"


def test_malformed_files_warn_and_discovery_goes_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    h = build("no_pci_locality", tmp_path)
    h.write("/sys/devices/system/node/node1/cpulist", "8-15,zz")  # cpumap is still there: use it
    h.write("/sys/devices/system/node/node0/meminfo", "Node 0 MemTotal: lots\n")
    h.write("/sys/devices/pci0000:00/0000:41:00.0/numa_node", "x")
    topo = as_json(h, capsys)
    assert [n["cpus"] for n in topo["numa_nodes"]] == [list(range(8)), list(range(8, 16))]
    assert topo["numa_nodes"][0]["memory_total_bytes"] == 0
    problems = "\n".join(topo["problems"])
    assert "node1/cpulist: bad cpulist element 'zz'" in problems and "trying" in problems
    assert "node0/meminfo" in problems and "0000:41:00.0/numa_node" in problems
    (h.root / "sys/devices/system/node/node1/cpumap").write_text("nothex\n")
    topo = as_json(h, capsys)
    assert [n["id"] for n in topo["numa_nodes"]] == [0]
    assert any(e["ids"] == [1] and "could not be read" in e["reason"] for e in topo["excluded"])
    assert doctor(h, capsys)["topology.numa"]["status"] == "warn"


def test_no_node_directories_never_reads_the_running_machine(tmp_path: Path) -> None:
    h = FakeHost(tmp_path / "flat")
    for c in range(3):
        h.write(f"/sys/devices/system/cpu/cpu{c}/uevent", "")
    assert topo_of(h).numa_nodes[0].cpus == [0, 1, 2]  # from the tree's cpuN directories
    empty = FakeHost(tmp_path / "empty")
    assert topo_of(empty).numa_nodes[0].cpus == []  # not os.cpu_count() of this machine


def test_vmd_domain_nic(tmp_path: Path) -> None:
    h = FakeHost(tmp_path / "vmd")
    h.cpus(4)
    h.numa_node(0, [0, 1, 2, 3], 1024)
    bdf = "10000:01:00.0"
    h.pci_device(bdf, "0x8086", "0x020000", 0, [0, 1, 2, 3], root_port="pci0000:00/0000:00:0e.0/pci10000:00")
    real = f"/sys/devices/pci0000:00/0000:00:0e.0/pci10000:00/{bdf}"
    h.write(f"{real}/net/eno1/address", "00:11:22:33:44:55")
    h.link(f"{real}/net/eno1/device", "../../../" + bdf)
    h.link("/sys/class/net/eno1", f"../../devices/pci0000:00/0000:00:0e.0/pci10000:00/{bdf}/net/eno1")
    (nic,) = topo_of(h).nics
    assert (nic.name, nic.pci_bus_id, nic.numa_node) == ("eno1", bdf, 0)


def test_no_command_dies_on_malformed_sysfs(tmp_path: Path) -> None:
    """topology, doctor, apply and launch --dry-run on a tree where every topology file is garbage: each ends
    with a documented exit code and no traceback."""
    h = FakeHost(tmp_path / "garbage")
    h.numa_node(0, [0, 1], 1024)
    h.numa_node(1, [2, 3], 1024)
    h.write_raw("/sys/devices/system/node/node0/cpulist", b"0-1\n\x00")
    h.write("/sys/devices/system/node/node1/cpulist", "2-zz")
    h.write("/sys/devices/system/node/node1/cpumap", "not-hex")
    h.write("/sys/devices/system/node/node1/meminfo", "Node 1 MemTotal: many\n")
    h.write("/sys/devices/system/cpu/online", "0-3,\x00x")
    h.write("/sys/devices/system/node/online", "0-")
    h.write("/proc/self/status", "Cpus_allowed_list:\tall\nMems_allowed_list:\t-1\n")
    h.write("/proc/self/cgroup", "0::/job\nnot a cgroup line")
    h.write("/sys/fs/cgroup/cgroup.controllers", "cpuset")
    h.write("/sys/fs/cgroup/job/cpuset.cpus.effective", "x-y")
    h.gpu("0000:01:00.0", 0, [0, 1])
    h.write("/sys/devices/pci0000:00/0000:01:00.0/numa_node", "abc")
    h.write("/sys/devices/pci0000:00/0000:01:00.0/local_cpulist", "??")
    h.write("/sys/devices/pci0000:00/0000:01:00.0/local_cpus", "xyz")
    h.write("/proc/driver/nvidia/gpus/0000:01:00.0/numa_status", "Node: none\n")
    h.accounts()  # root, from the tree's own /etc/passwd
    conf = h.root / "c.toml"
    conf.write_text('[vllm]\nmodel = "org/m"\nnodes = [1]\nuser = "root"\n')
    conf.chmod(0o600)
    repo = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(repo))
    codes = {}
    for argv in (["topology"], ["topology", "--json"], ["doctor"], ["apply"], ["launch", "--dry-run", "--json"]):
        r = subprocess.run(
            [sys.executable, "-m", "vllm_nodeagent.cli", "--root", str(h.root), "--config", str(conf), *argv],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert "Traceback" not in r.stderr + r.stdout, (argv, r.stderr)
        codes[argv[0] + ("-json" if "--json" in argv else "")] = r.returncode
        if argv[0] == "launch":
            assert "NUMA node 1 is not usable: its CPU list could not be read" in r.stderr
    assert codes["topology"] == codes["topology-json"] == 0
    (gpu,) = discover(Host(h.root)).gpus  # nothing readable places it, and node 1 is unknown: no guess of node 0
    assert gpu.numa_node == -1 and "could not be read" in gpu.no_locality
    assert codes["doctor"] in (0, 1) and codes["apply"] in (0, 1)
    assert codes["launch-json"] == 1  # node 1's CPU list is unreadable: the plan is refused, not guessed
