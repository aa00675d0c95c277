"""The tree classes of issue 24, each as the kernel and Slurm lay it out: the usable CPUs and nodes, the reason
for each exclusion, and what ``topology --json`` says it read (``sources``). hwloc agrees on every one of them
(tests/test_hwloc_crosscheck.py); these assert the agent's own answer, which the code before issue 24 got wrong."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import HOSTS, unavailable_opener
from jsoncontract import legacy_topology

from vllm_nodeagent import cli
from vllm_nodeagent.cpuset import parse_mountinfo, parse_mounts
from vllm_nodeagent.host import Host
from vllm_nodeagent.topology import discover

JOB = {"usable": {0: [2, 3, 4, 5]}, "gpus": {"0000:17:00.0": 0, "0000:b1:00.0": -1}}
CLASSES = {
    "legacy_cpuset_fs": ("cpuset", "/dev/cpuset", "/proc/self/cpuset", "/dev/cpuset/slurm/uid_1000/job_42/step_0/cpus"),
    "cgroup_v1_proc_cpuset": (
        "cgroup1",
        "/sys/fs/cgroup/cpuset",
        "/proc/self/cpuset",
        "/sys/fs/cgroup/cpuset/slurm/uid_1000/job_42/step_0/cpuset.cpus",
    ),
    "slurm_own_hierarchy": (
        "cgroup2",
        "/cgroup/unified",
        "/proc/self/cgroup",
        "/cgroup/unified/uid_1000/job_42/step_0/cpuset.cpus.effective",
    ),
    "cgroup2_dev_cgroup": (
        "cgroup2",
        "/dev/cgroup",
        "/proc/self/cgroup",
        "/dev/cgroup/slurm/uid_1000/job_42/step_0/user/task_0/cpuset.cpus.effective",
    ),
}


def topo_json(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    root = tmp_path / name
    HOSTS[name](root)
    assert cli.main(["--root", str(root), "topology", "--json"], nvml_opener=unavailable_opener) == 0  # type: ignore[arg-type]
    data: dict[str, Any] = legacy_topology(json.loads(capsys.readouterr().out))
    return data


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_job_cpuset_wherever_it_is_mounted(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = topo_json(name, tmp_path, capsys)
    assert {n["id"]: n["cpus"] for n in data["numa_nodes"]} == JOB["usable"]  # node 1 is outside the job's mems
    assert {g["pci_bus_id"]: g["numa_node"] for g in data["gpus"]} == JOB["gpus"]
    kind, mount, path_from, cpus_file = CLASSES[name]
    src = data["sources"]["cpuset"]
    assert (src["kind"], src["mount"], src["path_from"], src["cpus_file"]) == (kind, mount, path_from, cpus_file)
    assert src["mounts_from"] == "/proc/self/mountinfo"
    reasons = {e["reason"]: e["ids"] for e in data["excluded"]}
    assert reasons[f"not in the cgroup's cpuset ({cpus_file} = 2-5)"] == [0, 1, 6, 7, *range(8, 16)]


def test_per_cpu_online_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = topo_json("per_cpu_offline", tmp_path, capsys)
    assert {n["id"]: n["cpus"] for n in data["numa_nodes"]} == {0: [0, 1, 4, 5, 6, 7], 1: [8, 10, 11, 12, 13, 14, 15]}
    reasons = {tuple(e["ids"]): e["reason"] for e in data["excluded"]}
    assert reasons[(2,)] == "offline (/sys/devices/system/cpu/cpu2/online = 0)"
    assert data["sources"]["cpu_online"] == "/sys/devices/system/cpu/cpuN/online"


def test_nodes_repeating_the_same_cpus_are_ignored(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = topo_json("same_cpumap_numa", tmp_path, capsys)
    assert [(n["id"], n["cpus"]) for n in data["numa_nodes"]] == [(0, list(range(16)))]
    assert data["gpus"][0]["numa_node"] == 0  # its numa_node 2 was one of the ignored copies
    assert any("ignored, as hwloc does" in p for p in data["problems"])
    assert [e["ids"] for e in data["excluded"] if e["what"] == "node"] == [[1, 2, 3]]
    assert not [e for e in data["excluded"] if e["what"] == "cpu"]  # the CPUs are all usable, on node 0


def test_late_memory_node_is_a_node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = topo_json("memory_node_not_in_mems_allowed", tmp_path, capsys)
    assert [(n["id"], n["kind"]) for n in data["numa_nodes"]] == [(0, "cpu"), (1, "cpu"), (2, "memory")]


def test_a_cpu_node_outside_mems_allowed_is_still_excluded(tmp_path: Path) -> None:
    root = tmp_path / "h"
    h = HOSTS["memory_node_not_in_mems_allowed"](root)
    h.allowed("0-15", "0")
    topo = discover(Host(root))
    assert [n.id for n in topo.numa_nodes] == [0, 2]  # node 1 has CPUs: Mems_allowed still bounds it


def test_mount_tables() -> None:
    info = (
        "30 25 0:26 / /sys/fs/cgroup/cpuset rw,nosuid shared:9 - cgroup cgroup rw,cpuset\n"
        "31 25 0:27 /slurm /cgroup/cpu\\040set rw - cgroup cgroup rw,cpuset,noprefix\n"
        "garbage\n"
    )
    mounts = parse_mountinfo(info)
    assert [(m.point, m.fstype, "cpuset" in m.options, m.root) for m in mounts] == [
        ("/sys/fs/cgroup/cpuset", "cgroup", True, "/"),
        ("/cgroup/cpu set", "cgroup", True, "/slurm"),
    ]
    assert [m.point for m in parse_mounts("none /dev/cpuset cpuset rw 0 0\nshort\n")] == ["/dev/cpuset"]


def test_mount_of_a_subtree(tmp_path: Path) -> None:
    """A mount of a subtree (mountinfo root /slurm): the task's /slurm/... path is found below the mount point."""
    root = tmp_path / "h"
    h = HOSTS["legacy_cpuset_fs"](root)
    h.write("/proc/self/mountinfo", "20 1 0:30 /slurm /dev/cpuset rw - cpuset none rw\n")
    h.write("/dev/cpuset/uid_1000/job_42/step_0/cpus", "3")
    h.write("/dev/cpuset/uid_1000/job_42/step_0/mems", "0")
    topo = discover(Host(root))
    assert [n.cpus for n in topo.numa_nodes] == [[3]]
    assert topo.sources["cpuset"]["cpus_file"] == "/dev/cpuset/uid_1000/job_42/step_0/cpus"


def test_device_spanning_nodes_of_which_one_is_the_steps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Found by tests/vm/test_slurm_vm.py: in a step on node 0 the NIC (numa_node -1, local CPUs 0-1) is node 0's,
    as lstopo in the step says; outside a narrowed cpuset the same NIC has no locality."""
    data = topo_json("step_on_one_node", tmp_path, capsys)
    assert [(n["name"], n["numa_node"]) for n in data["nics"]] == [("eth0", 0)]
    root = tmp_path / "unconfined"
    h = HOSTS["step_on_one_node"](root)
    h.allowed("0-1", "0-1")
    h.write("/sys/fs/cgroup/system.slice/slurmstepd.scope/job_3/step_0/user/task_0/cpuset.cpus.effective", "0-1")
    assert [n.numa_node for n in discover(Host(root)).nics] == [-1]
