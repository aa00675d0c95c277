"""Readiness checks 10 and 12 (PCIe link, clock throttling) on the NVML double and fake sysfs."""

from __future__ import annotations

from checkhelp import probe, results
from fakehost import FakeHost
from nvml_double import NvmlDouble

from vllm_nodeagent.checks.link import judge_reasons


def link(hgx: FakeHost, nvml: NvmlDouble, waits: list[float]) -> dict:
    p = probe(hgx, "", nvml)
    p.sleep = waits.append
    return results(p, "link")


def test_idle_gen1_is_no_alarm_and_idle_is_not_throttling(hgx: FakeHost, hgx_nvml: NvmlDouble) -> None:
    waits: list[float] = []
    got = link(hgx, hgx_nvml, waits)
    assert got["gpu.pcie_link"].status == "pass"
    assert got["gpu.pcie_link"].current == "all 8: x16/x16 Gen1/Gen5 (idle: a lower generation saves power)"
    assert (got["gpu.throttle"].status, got["gpu.throttle"].current) == ("pass", "idle")
    assert waits == []  # every GPU idle: no window to wait for
    hgx_nvml.rec["devices"][4]["clocks_event_reasons"] = [0x4]  # one GPU busy at its power cap
    hgx_nvml.reason_calls.clear()
    got = link(hgx, hgx_nvml, waits)
    assert waits == [0.05]  # one short window for all GPUs, not one per GPU
    assert (got["gpu.throttle"].status, got["gpu.throttle"].current) == ("pass", "SW power cap, idle")


def test_downshifted_generation_under_load_warns(hgx: FakeHost, hgx_nvml: NvmlDouble) -> None:
    hgx_nvml.rec["devices"][2]["utilization_gpu"] = 95
    r = link(hgx, hgx_nvml, [])["gpu.pcie_link"]
    assert (r.status, r.current) == ("warn", "GPU2: x16/x16 Gen1/Gen5 at 95% busy: running below its generation")


def test_narrow_link_warns_even_when_idle(hgx: FakeHost, hgx_nvml: NvmlDouble) -> None:
    hgx_nvml.rec["devices"][5]["pcie"] = {"curr_width": 8, "max_width": 16, "curr_gen": 5, "max_gen": 5}
    r = link(hgx, hgx_nvml, [])["gpu.pcie_link"]
    assert r.status == "warn" and r.current == "GPU5: x8/x16 Gen5/Gen5: narrower than the link can be"


def test_width_from_sysfs_without_nvml(hgx: FakeHost) -> None:
    hgx.write("/sys/devices/pci0000:00/0000:18:00.0/current_link_width", "4")
    hgx.write("/sys/devices/pci0000:00/0000:18:00.0/max_link_width", "16")
    got = results(probe(hgx), "link")
    assert (
        got["gpu.pcie_link"].status == "warn"
        and got["gpu.pcie_link"].current == "GPU0: x4/x16: narrower than the link can be"
    )
    assert got["gpu.throttle"].status == "skip"


def test_hardware_slowdown(hgx: FakeHost, hgx_nvml: NvmlDouble) -> None:
    hgx_nvml.rec["devices"][1]["clocks_event_reasons"] = [0x8, 0x8]
    r = link(hgx, hgx_nvml, [])["gpu.throttle"]
    assert (r.status, r.current) == ("fail", "GPU1: HW slowdown")
    hgx_nvml.rec["devices"][1]["clocks_event_reasons"] = [0x0, 0x80]  # a blip in one sample of two
    hgx_nvml.reason_calls.clear()
    assert link(hgx, hgx_nvml, [])["gpu.throttle"].status == "warn"


def test_reason_table() -> None:
    assert judge_reasons([0x4, 0x4]) == ("pass", "SW power cap")  # under load: the power limit at work
    assert judge_reasons([0x20, 0x0]) == ("warn", "SW thermal slowdown")
    assert judge_reasons([0x0, 0x0]) == ("pass", "none")
    assert judge_reasons([0x1, 0x1]) == ("pass", "idle")


def test_throttle_not_reported_skips(hgx: FakeHost, hgx_nvml: NvmlDouble) -> None:
    for d in hgx_nvml.rec["devices"]:
        d.pop("clocks_event_reasons")
    waits: list[float] = []
    assert link(hgx, hgx_nvml, waits)["gpu.throttle"].status == "skip" and waits == []
