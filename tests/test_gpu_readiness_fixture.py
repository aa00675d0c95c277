"""Replays the readiness checks' NVML answers recorded on the lent H100 (issue 16) without a GPU.

tests/gpu/h100-2026-11-25-vllm/nvml-issue16.json holds what tests/gpu/record_nvml.py read from the real H100
(remapped rows, ECC, compute processes, compute mode, MIG, PCIe link, clock-event reasons, fabric state);
doctor-etc-config.json is what the real doctor reported from those answers with etc/config.toml. Fed back
through the GPU checks over that machine's recorded sysfs (tests/gpu/h100-2026-11-25), every status must come
out as the real doctor's: a check that would judge the real hardware differently fails here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from nvml_double import NvmlDouble

from vllm_nodeagent.checks import CheckResult, Probe, run_all
from vllm_nodeagent.config import load_config
from vllm_nodeagent.host import Host
from vllm_nodeagent.nvml import Nvml
from vllm_nodeagent.topology import discover

GPU = Path(__file__).parent / "gpu"
RUN = GPU / "h100-2026-11-25-vllm"
H100_ROOT = GPU / "h100-2026-11-25" / "root"  # the same lent machine's sysfs (issue 7)
CONFIG = Path(__file__).resolve().parent.parent / "etc/config.toml"  # what the real doctor ran with
GPU_IDS = ("gpu.memory_health", "gpu.foreign_processes", "gpu.compute_mode", "gpu.mig", "gpu.pcie_link", "gpu.throttle")


def recorded() -> dict[str, dict[str, str]]:
    return {c["id"]: c for c in json.loads((RUN / "doctor-etc-config.json").read_text())["checks"]}


def replay(tmp_path: Path, areas: tuple[str, ...]) -> dict[str, CheckResult]:
    cfg = tmp_path / "config.toml"
    shutil.copyfile(CONFIG, cfg)
    cfg.chmod(0o600)
    host = Host(H100_ROOT)
    nvml = Nvml.open(lambda: NvmlDouble.from_file(RUN / "nvml-issue16.json"))
    probe = Probe(
        host, load_config(str(cfg), Path("/nonexistent")), discover(host, nvml), nvml, sleep=lambda _s: None
    )  # throttle's sampling window: the recorded answers do not change
    return {r.id: r for r in run_all(probe, areas)}


@pytest.mark.parametrize("cid", GPU_IDS)
def test_replayed_gpu_checks_give_what_the_real_doctor_reported(tmp_path: Path, cid: str) -> None:
    want = recorded()[cid]
    got = replay(tmp_path, ("gpu", "link"))[cid]
    assert (got.status, got.current, got.desired) == (want["status"], want["current"], want["desired"])


def test_the_recording_is_a_healthy_idle_pcie_h100() -> None:
    """What the statuses above rest on, read from the recording itself (so a re-recording that changed the
    hardware's answers is noticed here, not silently matched)."""
    (dev,) = json.loads((RUN / "nvml-issue16.json").read_text())["devices"]
    assert dev["name"] == "NVIDIA H100 80GB HBM3"
    assert dev["remapped_rows"] == [0, 0, 0, 0] and dev["ecc_uncorrected_volatile"] == 0
    assert dev["compute_processes"] == [] and dev["compute_mode"] == 0 and dev["mig_mode"] == [0, 0]
    assert dev["pcie"] == {"curr_width": 16, "max_width": 16, "curr_gen": 5, "max_gen": 5}
    assert dev["fabric"] == [0, 0]  # no NVSwitch fabric: a PCIe card


def test_replayed_fabric_and_p2p_skip_on_one_pcie_gpu(tmp_path: Path) -> None:
    # The recorded doctor run predates the fabric and p2p areas (no such ids in doctor-etc-config.json): what
    # the recorded answers must give is read from the hardware facts — one PCIe H100, fabric state 0.
    assert not any(i.startswith(("fabric", "p2p")) for i in recorded())
    got = replay(tmp_path, ("fabric", "p2p"))
    assert {k: (r.status, r.detail) for k, r in got.items()} == {
        "fabric": ("skip", "no NVSwitch fabric (PCIe board or NVLink bridges)"),
        "p2p": ("skip", "one GPU: no GPU-to-GPU traffic"),
    }


def test_the_replay_is_not_vacuous(tmp_path: Path) -> None:
    """The same checks on a doctored copy of the recording fail where the real answers passed: the statuses
    above come from the recorded values, not from defaults."""
    data = json.loads((RUN / "nvml-issue16.json").read_text())
    dev = data["devices"][0]
    dev["pcie"]["curr_width"] = 8
    dev["compute_mode"] = 3  # exclusive-process
    dev["remapped_rows"] = [0, 1, 1, 0]  # an uncorrectable row, its remap pending until a reset
    path = tmp_path / "nvml.json"
    path.write_text(json.dumps(data))
    cfg = tmp_path / "config.toml"
    shutil.copyfile(CONFIG, cfg)
    cfg.chmod(0o600)
    host = Host(H100_ROOT)
    nvml = Nvml.open(lambda: NvmlDouble.from_file(path))
    probe = Probe(host, load_config(str(cfg), Path("/nonexistent")), discover(host, nvml), nvml, sleep=lambda _s: None)
    got = {r.id: r.status for r in run_all(probe, ("gpu", "link"))}
    real = recorded()
    for cid in ("gpu.memory_health", "gpu.compute_mode", "gpu.pcie_link"):
        assert real[cid]["status"] == "pass" and got[cid] != "pass", cid
