"""Readiness check 1 (GPU-to-GPU path: P2P status, ACS on the bridges, IOMMU mode) on fake trees + the double."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from checkhelp import probe, results
from fakehost import FakeHost, workstation
from nvml_double import NvmlDouble

from vllm_nodeagent.checks.p2p import acs_control

SWITCH = "pci0000:00/0000:00:01.0/0000:01:00.0"  # root port -> PCIe switch upstream port
DOWN = {"0000:02:00.0": "0000:03:00.0", "0000:02:01.0": "0000:04:00.0"}  # switch downstream port -> GPU


def config_space(acs_ctrl: int = 0, with_acs: bool = True) -> bytes:
    data = bytearray(4096)
    if with_acs:  # an AER capability first, then ACS: the walk must follow the next pointers
        data[0x100:0x104] = (0x0001 | 1 << 16 | 0x140 << 20).to_bytes(4, "little")
        data[0x140:0x144] = (0x000D | 1 << 16).to_bytes(4, "little")
        data[0x146:0x148] = acs_ctrl.to_bytes(2, "little")
    return bytes(data)


def pcie_box(root: Path, acs_ctrl: int = 0) -> FakeHost:
    h = FakeHost(root)
    h.cpus(16)
    h.numa_node(0, list(range(16)), 64 * 1024 * 1024)
    h.meminfo(64 * 1024 * 1024, 60 * 1024 * 1024)
    for port, gpu in DOWN.items():
        h.pci_device(gpu, "0x10de", "0x030200", 0, list(range(16)), root_port=f"{SWITCH}/{port}")
        (h.root / f"sys/devices/{SWITCH}/{port}/config").write_bytes(config_space(acs_ctrl))
    (h.root / f"sys/devices/{SWITCH}/config").write_bytes(config_space(0))
    (h.root / "sys/devices/pci0000:00/0000:00:01.0/config").write_bytes(config_space(with_acs=False))
    return h


def two_gpu_nvml(p2p: int = 0) -> NvmlDouble:
    devs: list[dict[str, Any]] = [
        {
            "bus_id": f"00000000:0{b}:00.0",
            "name": "NVIDIA L40S",
            "uuid": f"GPU-{b}",
            "memory_affinity_nodes": [0],
            "cpu_affinity": list(range(16)),
        }
        for b in (3, 4)
    ]
    return NvmlDouble(
        {"driver_version": "580.159.04", "devices": devs, "common_ancestor": {"0-1": 20}, "p2p_read": {"0-1": p2p}}
    )


def test_pcie_pair_without_acs_or_iommu_passes(tmp_path: Path) -> None:
    h = pcie_box(tmp_path / "r")
    got = results(probe(h, "", two_gpu_nvml()), "p2p")
    assert {k: r.status for k, r in got.items()} == {"p2p.status": "pass", "p2p.acs": "pass", "p2p.iommu": "pass"}
    assert got["p2p.status"].current == "1 PCIe pair(s) OK"
    assert got["p2p.acs"].current == "4 bridge(s), none redirect"


def test_acs_redirect_on_the_switch_ports_warns(tmp_path: Path) -> None:
    h = pcie_box(tmp_path / "r", acs_ctrl=0x1D)  # SV + RR + CR + UF, as a BIOS with ACS on leaves it
    r = results(probe(h, "", two_gpu_nvml()), "p2p")["p2p.acs"]
    assert r.status == "warn"
    assert r.current == "0000:02:00.0: ReqRedir+CmpltRedir; 0000:02:01.0: ReqRedir+CmpltRedir"


def test_p2p_not_supported_and_translating_iommu_warn(tmp_path: Path) -> None:
    h = pcie_box(tmp_path / "r")
    for n, gpu in enumerate(DOWN.values()):
        h.write(f"/sys/kernel/iommu_groups/{n}/type", "DMA-FQ")
        h.link(f"/sys/devices/{SWITCH}/{list(DOWN)[n]}/{gpu}/iommu_group", f"../../../../../../kernel/iommu_groups/{n}")
    h.write("/proc/cmdline", "BOOT_IMAGE=/vmlinuz root=/dev/sda1 intel_iommu=on quiet")
    got = results(probe(h, "", two_gpu_nvml(p2p=3)), "p2p")
    assert got["p2p.status"].status == "warn"
    assert got["p2p.status"].current == "GPU0-GPU1 (PXB): IOH topology not supported"
    assert (got["p2p.iommu"].status, got["p2p.iommu"].current) == ("warn", "DMA-FQ (cmdline: intel_iommu=on)")
    assert "iommu=pt" in got["p2p.iommu"].hint


def test_unreadable_config_space_skips_acs(tmp_path: Path) -> None:
    h = pcie_box(tmp_path / "r")
    for p in (h.root / "sys/devices").rglob("config"):
        p.write_bytes(bytes(64))  # what an unprivileged read returns
    assert results(probe(h, "", two_gpu_nvml()), "p2p")["p2p.acs"].status == "skip"
    assert acs_control(bytes(64)) is None and acs_control(config_space(with_acs=False)) == 0


def test_nvswitch_and_single_gpu_skip(hgx: FakeHost, hgx_nvml: NvmlDouble, tmp_path: Path) -> None:
    got = results(probe(hgx, "", hgx_nvml), "p2p")
    assert [(r.status, r.detail) for r in got.values()] == [
        ("skip", "NVLink/NVSwitch carries every GPU pair's traffic")
    ]
    one = results(probe(workstation(tmp_path / "ws")), "p2p")
    assert [r.detail for r in one.values()] == ["one GPU: no GPU-to-GPU traffic"]
