from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import HOSTS, opener_for, unavailable_opener
from fakehost import FakeHost
from jsoncontract import legacy_topology
from nvml_double import NvmlDouble, hgx_8gpu_recording

from vllm_nodeagent import cli
from vllm_nodeagent.host import Host
from vllm_nodeagent.host.parse import parse_cpulist
from vllm_nodeagent.topology import discover


def topology_json(root: Path, capsys: pytest.CaptureFixture[str], opener: object = unavailable_opener) -> dict:
    rc = cli.main(["--root", str(root), "topology", "--json"], nvml_opener=opener)  # type: ignore[arg-type]
    assert rc == 0
    return legacy_topology(json.loads(capsys.readouterr().out))


def test_8gpu_with_nvml(hgx: FakeHost, hgx_nvml: NvmlDouble, capsys: pytest.CaptureFixture[str]) -> None:
    topo = topology_json(hgx.root, capsys, opener_for(hgx_nvml))
    assert [n["id"] for n in topo["numa_nodes"]] == [0, 1]
    assert topo["numa_nodes"][1]["cpus"] == list(range(56, 112))
    assert topo["numa_nodes"][0]["memory_total_bytes"] == 1056 * 2**30
    gpus = topo["gpus"]
    assert [g["pci_bus_id"] for g in gpus] == [
        "0000:18:00.0",
        "0000:2a:00.0",
        "0000:3a:00.0",
        "0000:5d:00.0",
        "0000:9a:00.0",
        "0000:ab:00.0",
        "0000:ba:00.0",
        "0000:db:00.0",
    ]
    assert [g["index"] for g in gpus] == list(range(8))
    assert [g["numa_node"] for g in gpus] == [0] * 4 + [1] * 4
    assert all(g["source"] == "nvml" and g["name"] == "NVIDIA H100 80GB HBM3" for g in gpus)
    assert gpus[5]["local_cpus"] == list(range(56, 112))
    assert gpus[0]["uuid"].startswith("GPU-")
    assert topo["warnings"] == []
    assert {n["name"]: n["numa_node"] for n in topo["nics"]} == {"ens1f0np0": 0, "ens9f0np0": 1}
    blocks = {b["name"]: b for b in topo["block_devices"]}
    assert set(blocks) == {"nvme0n1", "nvme1n1", "sda"}  # loop0 is virtual
    assert blocks["sda"]["scheduler"] == "bfq" and blocks["sda"]["rotational"] is True
    assert blocks["nvme0n1"]["available_schedulers"] == ["none", "mq-deadline", "kyber", "bfq"]


def test_nvml_absent_falls_back_to_sysfs(hgx: FakeHost, capsys: pytest.CaptureFixture[str]) -> None:
    topo = topology_json(hgx.root, capsys)
    gpus = topo["gpus"]
    # the HDA audio function (0x0403) and the ASPEED VGA (vendor 0x1a03) are not GPUs
    assert len(gpus) == 8 and all(g["source"] == "sysfs" for g in gpus)
    assert [g["numa_node"] for g in gpus] == [0] * 4 + [1] * 4
    assert "Driver Not Loaded" in topo["nvml_error"]


def test_nvml_disagreeing_with_sysfs_warns(hgx: FakeHost, capsys: pytest.CaptureFixture[str]) -> None:
    rec = hgx_8gpu_recording()
    rec["devices"][0]["memory_affinity_nodes"] = [1]  # NVML says node 1, sysfs says 0
    topo = topology_json(hgx.root, capsys, opener_for(NvmlDouble(rec)))
    assert topo["gpus"][0]["numa_node"] == 1  # NVML wins, and the difference is reported
    assert any("0000:18:00.0" in w and "sysfs says 0" in w for w in topo["warnings"])


def test_workstation_numa_minus_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "ws"
    HOSTS["workstation"](root)
    topo = topology_json(root, capsys)
    assert topo["numa_nodes"] == [
        {"id": 0, "cpus": list(range(16)), "memory_total_bytes": 64 * 2**30, "kind": "cpu", "gpu": ""}
    ]
    assert len(topo["gpus"]) == 1
    assert topo["gpus"][0]["numa_node"] == 0 and topo["gpus"][0]["local_cpus"] == list(range(16))
    assert topo["nics"][0]["numa_node"] == 0


def test_h100_like_minus_one_resolved_through_local_cpulist(tmp_path: Path) -> None:
    h = FakeHost(tmp_path / "h")
    h.cpus(32)
    h.numa_node(0, list(range(16)), 1024)
    h.numa_node(1, list(range(16, 32)), 1024)
    h.gpu("0000:00:06.0", -1, list(range(16, 32)))
    topo = discover(Host(h.root))
    assert topo.gpus[0].numa_node == 1


def test_vm_no_gpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "vm"
    HOSTS["vm_no_gpu"](root)
    topo = topology_json(root, capsys)
    assert topo["gpus"] == []
    assert topo["nics"] == [{"name": "eth0", "pci_bus_id": "0000:00:03.0", "numa_node": 0}]
    assert topo["block_devices"][0]["name"] == "vda"
    assert topo["block_devices"][0]["scheduler"] == "mq-deadline"


def test_table_output(hgx: FakeHost, hgx_nvml: NvmlDouble, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--root", str(hgx.root), "topology"], nvml_opener=opener_for(hgx_nvml)) == 0
    out = capsys.readouterr().out
    assert "GPU7  0000:db:00.0  1              56-111" in out
    assert "NUMA Affinity" in out and "CPU Affinity" in out


def test_this_machine(capsys: pytest.CaptureFixture[str]) -> None:
    """Against this machine's real /sys: cross-check with the kernel's own views."""
    topo = topology_json(Path("/"), capsys, None)
    online = parse_cpulist(Path("/sys/devices/system/cpu/online").read_text())
    assert sorted(c for n in topo["numa_nodes"] for c in n["cpus"]) == online
    assert len(online) == os.cpu_count()
    names = {b["name"] for b in topo["block_devices"]}
    for name in names:
        raw = Path(f"/sys/block/{name}/queue/scheduler").read_text()
        cur = next(b for b in topo["block_devices"] if b["name"] == name)["scheduler"]
        assert f"[{cur}]" in raw
    real_nics = {p.name for p in Path("/sys/class/net").iterdir() if (p / "device").exists()}
    assert {n["name"] for n in topo["nics"]} <= real_nics


def test_host_seam_never_leaves_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sys").mkdir(parents=True)
    outside = tmp_path / "secret"
    outside.write_text("do not read\n")
    os.symlink("/../../../../secret", root / "sys/abs")  # absolute: restarts at the root
    os.symlink("../../../../secret", root / "sys/rel")  # relative: ".." stops at the root
    host = Host(root)
    assert host.read_or("/sys/abs") is None
    assert host.read_or("/sys/rel") is None
    assert host.read_or("/../secret") is None
    assert str(host.path("/sys/rel")).startswith(str(root))
    (root / "secret").write_text("inside\n")
    assert host.read("/sys/abs") == "inside"


def test_gpu_link_matrix_nvswitch_and_pcie(
    hgx: FakeHost, hgx_nvml: NvmlDouble, capsys: pytest.CaptureFixture[str]
) -> None:
    topo = topology_json(hgx.root, capsys, opener_for(hgx_nvml))
    links = topo["gpu_links"]
    assert len(links) == 8 and all(links[i][i] == "X" for i in range(8))
    assert links[0][7] == "NV18" and links[3][4] == "NV18"  # NVSwitch fabric: every pair


def test_gpu_link_matrix_without_nvlink(hgx: FakeHost, capsys: pytest.CaptureFixture[str]) -> None:
    rec = hgx_8gpu_recording()
    for d in rec["devices"]:
        del d["nvlinks"]  # PCIe cards: NVML answers Not Supported for link 0
    rec["devices"][0]["nvlinks"] = [{"type": 0, "remote": rec["devices"][1]["bus_id"]}] * 4  # an NVLink bridge
    rec["devices"][1]["nvlinks"] = [{"type": 0, "remote": rec["devices"][0]["bus_id"]}] * 4
    topo = topology_json(hgx.root, capsys, opener_for(NvmlDouble(rec)))
    links = topo["gpu_links"]
    assert links[0][1] == links[1][0] == "NV4"
    assert links[0][2] == "NODE" and links[0][5] == "SYS" and links[6][7] == "NODE"
    assert cli.main(["--root", str(hgx.root), "topology"], nvml_opener=opener_for(NvmlDouble(rec))) == 0
    out = capsys.readouterr().out
    assert "GPU0  X     NV4   NODE  NODE  SYS   SYS   SYS   SYS" in out


def test_no_link_matrix_from_sysfs(hgx: FakeHost, capsys: pytest.CaptureFixture[str]) -> None:
    assert topology_json(hgx.root, capsys)["gpu_links"] == []
