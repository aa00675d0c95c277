"""Readiness checks 4 and 6 (GPU memory health; foreign processes, compute mode, MIG) on the NVML double."""

from __future__ import annotations

from checkhelp import live_vllm, probe, results
from fakehost import FakeHost
from nvml_double import NvmlDouble

GIB = 1 << 30


def gpu(hgx: FakeHost, nvml: NvmlDouble, config: str = "") -> dict:
    return results(probe(hgx, config, nvml), "gpu")


def test_healthy_idle_hgx_passes(hgx: FakeHost, hgx_nvml: NvmlDouble) -> None:
    got = gpu(hgx, hgx_nvml)
    assert {k: r.status for k, r in got.items()} == {
        "gpu.memory_health": "pass",
        "gpu.foreign_processes": "pass",
        "gpu.compute_mode": "pass",
        "gpu.mig": "pass",
        "gpu.power_limit": "pass",
        "gpu.clocks": "pass",
        "gpu.ecc": "pass",
    }
    assert got["gpu.memory_health"].current == "8 GPU(s) ok"


def test_corrected_errors_are_not_failures(hgx: FakeHost, hgx_nvml: NvmlDouble) -> None:
    hgx_nvml.rec["devices"][2]["ecc_corrected_volatile"] = 4711
    r = gpu(hgx, hgx_nvml)["gpu.memory_health"]
    assert r.status == "pass"


def test_pending_remap_warns_and_failures_fail(hgx: FakeHost, hgx_nvml: NvmlDouble) -> None:
    devs = hgx_nvml.rec["devices"]
    devs[3]["remapped_rows"] = [0, 1, 1, 0]
    r = gpu(hgx, hgx_nvml)["gpu.memory_health"]
    assert r.status == "warn" and r.current == "GPU3: row remap pending (1 uncorrectable row(s)): reset the GPU"
    devs[5]["ecc_uncorrected_volatile"] = 2
    devs[5]["field_values"] = {"230": 1}
    r = gpu(hgx, hgx_nvml)["gpu.memory_health"]
    assert r.status == "fail"
    assert "GPU5: 2 uncorrectable ECC error(s) since the driver loaded; driver asks for: GPU reset" in (r.current or "")
    devs[6]["remapped_rows"] = [0, 0, 0, 1]
    assert "GPU6: row remapping failed" in (gpu(hgx, hgx_nvml)["gpu.memory_health"].current or "")


def test_boards_without_ecc_reporting_skip(hgx: FakeHost, hgx_nvml: NvmlDouble) -> None:
    for d in hgx_nvml.rec["devices"]:
        for k in ("remapped_rows", "ecc_uncorrected_volatile", "ecc_corrected_volatile", "field_values"):
            d.pop(k)
    assert gpu(hgx, hgx_nvml)["gpu.memory_health"].status == "skip"


def test_no_nvml_or_no_gpu_skips(hgx: FakeHost) -> None:
    got = gpu(hgx, None)  # type: ignore[arg-type]
    assert {r.status for r in got.values()} == {"skip"} and got["gpu.mig"].detail == "NVML unavailable"


def test_foreign_process_on_a_planned_gpu_fails(hgx: FakeHost, hgx_nvml: NvmlDouble) -> None:
    hgx.write("/proc/777/comm", "python3")
    hgx_nvml.rec["devices"][1]["compute_processes"] = [[777, 20 * GIB]]
    r = gpu(hgx, hgx_nvml)["gpu.foreign_processes"]
    assert (r.status, r.current) == ("fail", "GPU1: 777 python3")
    # not a planned GPU: vLLM uses 4-7 only
    cfg = "[vllm]\nmodel = 'm'\ngpus = [4, 5, 6, 7]\n"
    assert gpu(hgx, hgx_nvml, cfg)["gpu.foreign_processes"].status == "pass"


def test_vllms_own_workers_are_not_foreign(hgx: FakeHost, hgx_nvml: NvmlDouble) -> None:
    live_vllm(hgx, 4242, stat="4242 (vllm) S 1 4242")
    hgx.write("/proc/4300/comm", "VLLM::Worker_TP0")
    hgx.write("/proc/4300/stat", "4300 (VLLM::Worker TP0) S 4242 4242")  # a space inside comm
    hgx_nvml.rec["devices"][0]["compute_processes"] = [[4300, 70 * GIB]]
    hgx_nvml.rec["devices"][0]["memory"] = [80 * GIB, 71 * GIB]
    assert gpu(hgx, hgx_nvml)["gpu.foreign_processes"].status == "pass"


def test_memory_without_a_visible_process_warns(hgx: FakeHost, hgx_nvml: NvmlDouble) -> None:
    hgx_nvml.rec["devices"][7]["memory"] = [80 * GIB, 30 * GIB]
    r = gpu(hgx, hgx_nvml)["gpu.foreign_processes"]
    assert r.status == "warn" and "GPU7: 30.0 GiB used, no visible process" in (r.current or "")


def test_compute_mode_and_mig(hgx: FakeHost, hgx_nvml: NvmlDouble) -> None:
    devs = hgx_nvml.rec["devices"]
    devs[2]["compute_mode"] = 3
    got = gpu(hgx, hgx_nvml)
    assert (got["gpu.compute_mode"].status, got["gpu.compute_mode"].current) == ("warn", "GPU2: Exclusive_Process")
    devs[2]["compute_mode"] = 2
    assert gpu(hgx, hgx_nvml)["gpu.compute_mode"].status == "fail"
    devs[4]["mig_mode"] = [0, 1]
    r = gpu(hgx, hgx_nvml)["gpu.mig"]
    assert (r.status, r.current) == ("warn", "GPU4: 0->1 pending")
    devs[4]["mig_mode"] = [1, 1]
    assert gpu(hgx, hgx_nvml)["gpu.mig"].current == "GPU4: enabled"
    for d in devs:
        d.pop("mig_mode")
    assert gpu(hgx, hgx_nvml)["gpu.mig"].status == "skip"


# -- issue 27: the GPU's tuning, judged whether or not [gpu] manages it --------------------------------------
def test_a_power_limit_below_default_warns_with_its_source(hgx: FakeHost, hgx_nvml: NvmlDouble) -> None:
    hgx_nvml.rec["devices"][1]["power_limit_mw"] = 350000
    hgx_nvml.rec["devices"][1]["field_values"]["192"] = 700000  # asked for 700 W, held at 350 W by another cap
    hgx_nvml.rec["devices"][6]["power_limit_mw"] = 612500
    r = gpu(hgx, hgx_nvml)["gpu.power_limit"]
    assert r.status == "warn"
    assert r.current == (
        "GPU1: 350 W below its default 700 W; 700 W requested: another limiter (a system or out-of-band cap) "
        "holds it lower; GPU6: 612.5 W below its default 700 W"
    )
    assert "power_limit" in r.hint


def test_a_limit_above_default_is_no_alarm(hgx: FakeHost, hgx_nvml: NvmlDouble) -> None:
    for d in hgx_nvml.rec["devices"]:
        d["power_default_limit_mw"] = 600000
    r = gpu(hgx, hgx_nvml)["gpu.power_limit"]
    assert (r.status, r.current) == ("pass", "700 W (default 600 W, max 700 W) on 8 GPU(s)")


def test_clocks_below_the_top_or_held_by_a_lock_warn(hgx: FakeHost, hgx_nvml: NvmlDouble) -> None:
    hgx_nvml.rec["devices"][0]["applications_clocks"] = {"graphics": 1410, "memory": 2619}
    hgx_nvml.rec["devices"][4]["clocks_event_reasons"] = [0x2]  # Applications Clocks Setting, under load
    r = gpu(hgx, hgx_nvml)["gpu.clocks"]
    assert r.status == "warn"
    assert r.current == (
        "GPU0: graphics=1410 memory=2619 below the top graphics=1980 memory=2619; "
        "GPU4: held below its top by a clock setting (locked clocks: nvidia-smi -lgc)"
    )


def test_ecc_report(hgx: FakeHost, hgx_nvml: NvmlDouble) -> None:
    devs = hgx_nvml.rec["devices"]
    devs[0]["ecc_mode"] = [1, 0]  # someone ran nvidia-smi -e 0: takes effect at the next reset
    devs[1]["ecc_mode"] = [0, 0]
    devs[2]["ecc_uncorrected_aggregate"] = 3
    r = gpu(hgx, hgx_nvml)["gpu.ecc"]
    assert r.status == "warn"
    assert r.current == (
        "GPU0: ECC enabled, disabled pending a GPU reset; GPU1: ECC disabled (memory errors go undetected); "
        "GPU2: 3 uncorrected over its lifetime (aggregate)"
    )
    for d in devs:
        d["ecc_mode"] = {"error": "Not Supported"}
    assert gpu(hgx, hgx_nvml)["gpu.ecc"].status == "skip"


def test_managed_compute_mode_replaces_the_check(hgx: FakeHost, hgx_nvml: NvmlDouble) -> None:
    assert "gpu.compute_mode" in gpu(hgx, hgx_nvml)
    assert "gpu.compute_mode" not in gpu(hgx, hgx_nvml, '[gpu]\ncompute_mode = "default"\n')
