"""The agent's topology against hwloc's lstopo (a real, independent reader of the same sysfs and procfs).

Compared: the NUMA node set, each node's usable CPUs, its memory (within 2%), GPU-memory nodes, and the NUMA
locality of every GPU and NIC. On this machine, and on every tree fixture through HWLOC_FSROOT.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import HOSTS
from hwloc_peer import LSTOPO, compare, hwloc_bitmap, lstopo_xml, parse_view
from jsoncontract import legacy_topology

from vllm_nodeagent import cli

pytestmark = pytest.mark.skipif(
    shutil.which(LSTOPO) is None, reason=f"{LSTOPO} not installed (Debian/Ubuntu: apt-get install hwloc-nox)"
)

# Fixtures with node directories (hwloc needs them, and per-CPU topology directories, to read a tree).
TREES = [
    "two_socket_8gpu",
    "slurm_cgroup_v2_job",
    "offline_cpus_with_cxl",
    "cpumap_only",
    "gh200_like",
    "no_pci_locality",
    "trailing_nul_arm64",
    # issue 24: cpusets outside /sys/fs/cgroup, per-CPU offline, buggy NUMA, a late memory node
    "legacy_cpuset_fs",
    "cgroup_v1_proc_cpuset",
    "slurm_own_hierarchy",
    "cgroup2_dev_cgroup",
    "per_cpu_offline",
    "same_cpumap_numa",
    "memory_node_not_in_mems_allowed",
    "step_on_one_node",
]


def agent_json(root: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert cli.main(["--root", str(root), "topology", "--json"], nvml_opener=None) in (0,)
    return legacy_topology(json.loads(capsys.readouterr().out))


def test_bitmap_words() -> None:
    assert hwloc_bitmap("0x00000003") == [0, 1]
    assert hwloc_bitmap("0xffffffff,,0x0") == list(range(64, 96))
    assert hwloc_bitmap("0x0") == []


@pytest.mark.parametrize("name", TREES)
def test_tree_agrees_with_lstopo(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / name
    HOSTS[name](root)
    view = parse_view(lstopo_xml(root))
    agent = agent_json(root, capsys)
    assert compare(agent, view) == []
    assert view.nodes, "lstopo read no NUMA node from the tree: the comparison would be empty"


def test_this_machine_agrees_with_lstopo(capsys: pytest.CaptureFixture[str]) -> None:
    before = agent_json(Path("/"), capsys)
    view = parse_view(lstopo_xml())
    after = agent_json(Path("/"), capsys)
    assert compare(before, view, agent_after=after) == []


def test_a_wrong_answer_is_caught(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The comparison can fail: the agent's old answers (all nodes, node 0 for a GPU without locality) differ."""
    root = tmp_path / "job"
    HOSTS["slurm_cgroup_v2_job"](root)
    agent = agent_json(root, capsys)
    agent["numa_nodes"].append({"id": 7, "cpus": [28, 29, 30, 31], "memory_total_bytes": 64 << 30, "kind": "cpu"})
    agent["gpus"][1]["numa_node"] = 6
    diffs = compare(agent, parse_view(lstopo_xml(root)))
    assert any("NUMA nodes" in d for d in diffs)
    assert any("0000:c8:00.0" in d and "hwloc node -1" in d for d in diffs)
