"""Replays the lent H100 host (tests/gpu/h100-2026-11-25: its real sysfs and NVML answers) without a GPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import opener_for
from nvml_double import NvmlDouble

from vllm_nodeagent import cli
from vllm_nodeagent.host import Host
from vllm_nodeagent.nvml import Nvml
from vllm_nodeagent.topology import discover

H100 = Path(__file__).parent / "gpu" / "h100-2026-11-25"


def test_replayed_h100_topology_matches_the_real_run() -> None:
    recorded = json.loads((H100 / "topology.json").read_text())
    double = NvmlDouble.from_file(H100 / "nvml.json")
    topo = discover(Host(H100 / "root"), Nvml.open(lambda: double)).to_json()
    # The recording predates memory_node/no_locality: every field it has must match.
    assert [{k: g[k] for k in want} for g, want in zip(topo["gpus"], recorded["gpus"])] == recorded["gpus"]
    assert [(g["memory_node"], g["no_locality"]) for g in topo["gpus"]] == [(-1, "")]
    assert [n["cpus"] for n in topo["numa_nodes"]] == [n["cpus"] for n in recorded["numa_nodes"]]
    assert topo["nics"] == recorded["nics"]
    assert topo["block_devices"] == recorded["block_devices"]
    (gpu,) = topo["gpus"]
    # The real facts of that host: NVML's 8-digit domain normalised; sysfs numa_node -1 resolved to node 0.
    assert gpu["pci_bus_id"] == "0000:00:06.0" and gpu["numa_node"] == 0 and gpu["local_cpus"] == list(range(16))
    assert (H100 / "root/sys/bus/pci/devices/0000:00:06.0/numa_node").read_text().strip() == "-1"
    assert topo["warnings"] == []


def test_replayed_h100_without_nvml_agrees_with_nvml() -> None:
    recorded = json.loads((H100 / "topology.json").read_text())
    topo = discover(Host(H100 / "root")).to_json()
    (gpu,) = topo["gpus"]
    want = recorded["gpus"][0]
    assert (gpu["pci_bus_id"], gpu["numa_node"], gpu["local_cpus"], gpu["source"]) == (
        want["pci_bus_id"],
        want["numa_node"],
        want["local_cpus"],
        "sysfs",
    )


def test_replayed_h100_doctor_matches_the_real_run(capsys: pytest.CaptureFixture[str]) -> None:
    recorded = {c["id"]: c for c in json.loads((H100 / "doctor.json").read_text())["checks"]}
    double = NvmlDouble.from_file(H100 / "nvml.json")
    cfg = Path(__file__).resolve().parent.parent / "etc/config.toml"
    cli.main(["--root", str(H100 / "root"), "--config", str(cfg), "doctor", "--json"], nvml_opener=opener_for(double))
    replay = {c["id"]: c for c in json.loads(capsys.readouterr().out)["checks"]}
    for cid in (
        "nvml",
        "topology.gpu_numa",
        "gpu.0.persistence_mode",
        "sysctl.vm.max_map_count",
        "thp.enabled",
        "sysctl.net.ipv4.tcp_rmem",
        "cpu.governor",
    ):
        assert (replay[cid]["status"], replay[cid]["current"]) == (recorded[cid]["status"], recorded[cid]["current"])
    # The lent host's max_map_count is 31x the recommended floor: it passes and is never lowered.
    assert recorded["sysctl.vm.max_map_count"]["current"] == "8249672"
    assert recorded["sysctl.vm.max_map_count"]["status"] == "pass"
