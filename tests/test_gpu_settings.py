"""Issue 27: the GPU power limit, application clocks and compute mode settings, on the NVML double.

The write paths run only here (the lent GPU's settings are not ours to change): apply → doctor → revert on the
8-GPU fixture host is exact, the driver's refusals are one line each, a value someone else set since apply is
left, and the H200 recording (tests/gpu/h200-2026-12-02, read-only) replays through the same code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import opener_for
from fakehost import FakeHost, SysfsHost
from nvml_double import NvmlDouble

from vllm_nodeagent import cli
from vllm_nodeagent.checks import Probe, run_all
from vllm_nodeagent.config import ConfigError, parse_config
from vllm_nodeagent.host import Host
from vllm_nodeagent.nvml import Nvml
from vllm_nodeagent.settings import engine, families, restore
from vllm_nodeagent.settings.journal import Journal
from vllm_nodeagent.topology import discover

STATE = "/var/lib/vllm-nodeagent"
ALL = '[gpu]\npower_limit = "max"\nclocks = "max"\ncompute_mode = "default"\n'
H200 = Path(__file__).parent / "gpu" / "h200-2026-12-02"
H100_ROOT = Path(__file__).parent / "gpu" / "h100-2026-11-25" / "root"  # a lent VM: its GPU sits at 00:06.0 too


def live(double: NvmlDouble) -> dict[str, tuple[int, int, int, int]]:
    """Every GPU's power limit, application clocks and compute mode, as NVML reports them now."""
    nvml = Nvml.open(lambda: double)  # (re)initialised: a command's session shut it down
    out = {}
    for d in double.rec["devices"]:
        bus = d["bus_id"]
        g, m = nvml.applications_clocks(bus)
        out[bus] = (nvml.power_limits(bus).current, g, m, nvml.compute_mode(bus))
    return out


def left_by_an_earlier_job(double: NvmlDouble) -> None:
    devs = double.rec["devices"]
    devs[2]["power_limit_mw"] = 450000  # a provider's cap
    devs[3]["applications_clocks"] = {"graphics": 1410, "memory": 2619}  # -ac left by a benchmark
    devs[5]["compute_mode"] = 3  # Exclusive_Process


def cli_run(root: Path, capsys: pytest.CaptureFixture[str], double: NvmlDouble, config: str, *args: str) -> Any:
    cfg = root.parent / "gpu.toml"
    cfg.write_text(config)
    cfg.chmod(0o600)
    rc = cli.main(
        ["--root", str(root), "--config", str(cfg), *args], nvml_opener=opener_for(double), host_cls=SysfsHost
    )
    out = capsys.readouterr().out
    return rc, json.loads(out) if "--json" in args else out


def by_id(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["id"]: c for c in items}


def test_apply_doctor_revert_is_exact_on_the_8gpu_host(
    hgx: FakeHost, hgx_nvml: NvmlDouble, capsys: pytest.CaptureFixture[str]
) -> None:
    left_by_an_earlier_job(hgx_nvml)
    before = live(hgx_nvml)

    rc, report = cli_run(hgx.root, capsys, hgx_nvml, ALL, "doctor", "--json")
    checks = by_id(report["checks"])
    assert checks["gpu.2.power_limit"]["current"] == "450 W" and checks["gpu.2.power_limit"]["status"] != "pass"
    assert checks["gpu.3.clocks"]["current"] == "graphics=1410 memory=2619"
    assert checks["gpu.5.compute_mode"]["current"] == "Exclusive_Process"
    assert "gpu.compute_mode" not in checks  # the managed setting replaces the doctor-only check
    assert checks["gpu.power_limit"]["status"] == "warn"
    assert checks["gpu.power_limit"]["current"] == "GPU2: 450 W below its default 700 W"
    assert checks["gpu.clocks"]["current"] == (
        "GPU3: graphics=1410 memory=2619 below the top graphics=1980 memory=2619"
    )
    assert checks["gpu.ecc"]["status"] == "pass"

    rc, applied = cli_run(hgx.root, capsys, hgx_nvml, ALL, "apply", "--json")
    results = by_id(applied["results"])
    assert rc == 0 and len(results) == 24
    changed = {i: (r["previous"], r["current"]) for i, r in results.items() if r["status"] == "changed"}
    assert changed == {
        "gpu.2.power_limit": ("450 W", "700 W"),
        "gpu.3.clocks": ("graphics=1410 memory=2619", "graphics=1980 memory=2619"),
        "gpu.5.compute_mode": ("Exclusive_Process", "Default"),
    }
    assert {r["status"] for i, r in results.items() if i not in changed} == {"ok"}
    assert hgx_nvml.setter_calls == [
        ("nvmlDeviceSetPowerManagementLimit", "00000000:3A:00.0", (700000,)),
        ("nvmlDeviceSetApplicationsClocks", "00000000:5D:00.0", (2619, 1980)),  # memory first, as nvml.h has it
        ("nvmlDeviceSetComputeMode", "00000000:AB:00.0", (0,)),
    ]

    rc, report = cli_run(hgx.root, capsys, hgx_nvml, ALL, "doctor", "--json")
    checks = by_id(report["checks"])
    assert {c["status"] for i, c in checks.items() if i.startswith("gpu.") and "." in i[4:]} == {"pass"}
    assert checks["gpu.power_limit"]["status"] == checks["gpu.clocks"]["status"] == "pass"

    rc, reverted = cli_run(hgx.root, capsys, hgx_nvml, ALL, "revert", "--json")
    outcomes = by_id(reverted["results"])
    assert {i for i, o in outcomes.items() if o["status"] == "restored"} == set(changed)
    assert {o["status"] for i, o in outcomes.items() if i not in changed} == {"untouched"}
    assert live(hgx_nvml) == before  # exactly what the host had
    assert hgx_nvml.setter_calls[3:] == [
        ("nvmlDeviceSetPowerManagementLimit", "00000000:3A:00.0", (450000,)),
        ("nvmlDeviceSetApplicationsClocks", "00000000:5D:00.0", (2619, 1410)),
        ("nvmlDeviceSetComputeMode", "00000000:AB:00.0", (3,)),
    ]


def session(hgx: FakeHost, double: NvmlDouble, config: str) -> tuple[Host, Nvml, list[Any], Journal]:
    host = SysfsHost(hgx.root)
    nvml = Nvml.open(lambda: double)
    tunables = families.build_tunables(parse_config(config, "c"), discover(host, nvml), host, nvml)
    return host, nvml, tunables, Journal(host, STATE)


def test_revert_leaves_a_value_someone_changed_since_apply(hgx: FakeHost, hgx_nvml: NvmlDouble) -> None:
    left_by_an_earlier_job(hgx_nvml)
    host, nvml, ts, journal = session(hgx, hgx_nvml, '[gpu]\npower_limit = "max"\n')
    engine.apply(ts, journal, log_results=False)
    nvml.set_power_limit("00000000:3A:00.0", 600000)  # an operator, after the agent
    [drifted] = engine.drift(ts, journal)
    assert (drifted.id, drifted.current, drifted.desired) == ("gpu.2.power_limit", "600 W", "max")
    out = {o.id: o for o in restore.revert(host, journal, nvml, log_results=False)}
    assert out["gpu.2.power_limit"].status == engine.LEFT
    assert "agent wrote 700 W" in out["gpu.2.power_limit"].message
    assert nvml.power_limits("00000000:3A:00.0").current == 600000


def test_drift_is_seen_and_enforce_puts_it_back(hgx: FakeHost, hgx_nvml: NvmlDouble) -> None:
    host, nvml, ts, journal = session(hgx, hgx_nvml, ALL)
    assert {o.status for o in engine.apply(ts, journal, log_results=False)} == {engine.OK}
    nvml.set_applications_clocks("00000000:18:00.0", 1410, 2619)
    nvml.set_compute_mode("00000000:DB:00.0", 2)
    assert [(o.id, o.current) for o in engine.drift(ts, journal)] == [
        ("gpu.0.clocks", "graphics=1410 memory=2619"),
        ("gpu.7.compute_mode", "Prohibited"),
    ]
    again = {o.id: o.status for o in engine.apply(ts, journal, log_results=False)}
    assert again["gpu.0.clocks"] == again["gpu.7.compute_mode"] == engine.CHANGED
    assert engine.drift(ts, journal) == []
    # The original journaled at the first apply (found compliant) is what revert restores: nothing to write.
    out = {o.id: o for o in restore.revert(host, journal, nvml, log_results=False)}
    assert out["gpu.0.clocks"].status == engine.RESTORED and out["gpu.0.clocks"].current == "graphics=1980 memory=2619"


@pytest.mark.parametrize(
    ("config", "device", "call", "refusal"),
    [
        ('power_limit = "max"', 2, "nvmlDeviceSetPowerManagementLimit", "Insufficient Permissions"),
        ('clocks = "max"', 3, "nvmlDeviceSetApplicationsClocks", "Not Supported"),
        ('compute_mode = "default"', 5, "nvmlDeviceSetComputeMode", "In use by another client"),
    ],
)
def test_a_driver_refusal_fails_that_gpu_in_one_line_and_changes_nothing(
    hgx: FakeHost, hgx_nvml: NvmlDouble, config: str, device: int, call: str, refusal: str
) -> None:
    left_by_an_earlier_job(hgx_nvml)
    hgx_nvml.rec["devices"][device]["refuse"] = {call: refusal}
    before = live(hgx_nvml)
    host, nvml, ts, journal = session(hgx, hgx_nvml, f"[gpu]\n{config}\n")
    out = {o.id: o for o in engine.apply(ts, journal, log_results=False)}
    [failed] = [o for o in out.values() if o.status != engine.OK]
    bus = "0000:" + hgx_nvml.rec["devices"][device]["bus_id"].split(":", 1)[1].lower()  # sysfs form
    assert failed.status == engine.FAILED and failed.id.startswith(f"gpu.{device}.")
    assert failed.message == f"kernel refused: GPU {device} ({bus}): {call}: {refusal}; the host was left as it was"
    assert "\n" not in failed.message
    assert live(hgx_nvml) == before and hgx_nvml.setter_calls == []
    # revert finds the original still there: nothing to write
    assert {o.status for o in restore.revert(host, journal, nvml, log_results=False)} <= {
        engine.RESTORED,
        engine.UNTOUCHED,
    }
    assert hgx_nvml.setter_calls == []


def test_a_mig_enabled_gpu_says_so_when_refused(hgx: FakeHost, hgx_nvml: NvmlDouble) -> None:
    left_by_an_earlier_job(hgx_nvml)
    dev = hgx_nvml.rec["devices"][3]
    dev["mig_mode"] = [1, 1]
    dev["refuse"] = {"nvmlDeviceSetApplicationsClocks": "Not Supported"}
    _, _, ts, journal = session(hgx, hgx_nvml, '[gpu]\nclocks = "max"\n')
    out = {o.id: o for o in engine.apply(ts, journal, log_results=False)}
    assert "MIG is enabled on this GPU" in out["gpu.3.clocks"].message


def test_a_limit_outside_a_gpus_constraints_is_refused_before_any_write(hgx: FakeHost, hgx_nvml: NvmlDouble) -> None:
    _, _, ts, journal = session(hgx, hgx_nvml, "[gpu]\npower_limit = 800\n")
    out = engine.apply(ts, journal, log_results=False)
    assert {o.status for o in out} == {engine.NOT_CHANGED}
    assert out[0].message == (
        "800 W is outside GPU 0's power limit range 200 W to 700 W "
        "(nvmlDeviceGetPowerManagementLimitConstraints): set [gpu] power_limit inside it"
    )
    assert hgx_nvml.setter_calls == [] and journal.entries() == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("power_limit = 5000", "gpu.power_limit = 5000: out of range: a GPU power limit is 10 to 3000 W"),
        ("power_limit = 'full'", 'gpu.power_limit = \'full\': expected "max", "default" or a number of watts'),
        ("power_limit = true", "gpu.power_limit = true: expected"),
        ("clocks = { graphics = 1980 }", "gpu.clocks.memory = None: required key is missing"),
        ("clocks = { graphics = 1980, memory = 2619, sm = 1 }", "gpu.clocks.sm = 1: unknown key"),
        ("clocks = { graphics = 99999, memory = 2619 }", "gpu.clocks.graphics = 99999: expected an integer"),
        ("clocks = 'turbo'", "gpu.clocks = 'turbo': expected"),
        ("compute_mode = 'exclusive_process'", "gpu.compute_mode = 'exclusive_process': expected one of default"),
    ],
)
def test_bad_gpu_keys_are_one_line_config_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(f"[gpu]\n{text}\n", "/etc/vllm-nodeagent/config.toml")
    assert str(err.value).startswith(f"/etc/vllm-nodeagent/config.toml:2: {message}")


@pytest.mark.parametrize(
    ("pair", "why"),
    [
        ("{ graphics = 2100, memory = 2619 }", "graphics 2100 MHz is not supported by GPU 0 with memory 2619 MHz"),
        ("{ graphics = 1980, memory = 3201 }", "memory 3201 MHz is not supported by GPU 0 (supported: 2619 MHz)"),
    ],
)
def test_clocks_the_gpu_does_not_support_are_refused(hgx: FakeHost, hgx_nvml: NvmlDouble, pair: str, why: str) -> None:
    _, _, ts, journal = session(hgx, hgx_nvml, f"[gpu]\nclocks = {pair}\n")
    out = engine.apply(ts, journal, log_results=False)
    assert {o.status for o in out} == {engine.NOT_CHANGED} and out[0].message.startswith(why)
    assert hgx_nvml.setter_calls == []


def test_clocks_default_is_the_drivers_reset_and_reverts_exactly(hgx: FakeHost, hgx_nvml: NvmlDouble) -> None:
    left_by_an_earlier_job(hgx_nvml)
    host, nvml, ts, journal = session(hgx, hgx_nvml, "[gpu]\nclocks = 'default'\n")
    out = {o.id: o for o in engine.apply(ts, journal, log_results=False)}
    assert out["gpu.3.clocks"].status == engine.CHANGED
    assert hgx_nvml.setter_calls == [("nvmlDeviceResetApplicationsClocks", "00000000:5D:00.0", ())]
    restore.revert(host, journal, nvml, log_results=False)
    assert nvml.applications_clocks("00000000:5D:00.0") == (1410, 2619)


def test_a_pair_of_clocks_is_set_as_given(hgx: FakeHost, hgx_nvml: NvmlDouble) -> None:
    _, nvml, ts, journal = session(hgx, hgx_nvml, "[gpu]\nclocks = { graphics = 1590, memory = 2619 }\n")
    assert {o.status for o in engine.apply(ts, journal, log_results=False)} == {engine.CHANGED}
    assert {nvml.applications_clocks(d["bus_id"]) for d in hgx_nvml.rec["devices"]} == {(1590, 2619)}


def test_without_nvml_every_gpu_setting_skips(hgx: FakeHost) -> None:
    host = SysfsHost(hgx.root)
    ts = families.build_tunables(parse_config(ALL, "c"), discover(host, None), host, None, "Driver Not Loaded")
    out = engine.apply(ts, Journal(host, STATE), log_results=False)
    assert len(out) == 24 and {o.status for o in out} == {engine.SKIPPED}
    assert {o.message for o in out} == {"NVML not usable: Driver Not Loaded"}


@pytest.mark.parametrize("family", ["gpu_power_limit", "gpu_clocks", "gpu_compute_mode"])
@pytest.mark.parametrize(
    ("params", "why"),
    [
        ({"index": "0", "pci_bus_id": "../../etc"}, "bad pci_bus_id"),
        ({"index": "0", "pci_bus_id": "0000:18:00.0", "path": "/etc/shadow"}, "unexpected parameter"),
        ({"index": "x", "pci_bus_id": "0000:18:00.0"}, "bad index"),
    ],
)
def test_rebuild_refuses_journal_params_it_never_writes(family: str, params: dict[str, str], why: str) -> None:
    setting = {"gpu_power_limit": "power_limit", "gpu_clocks": "clocks", "gpu_compute_mode": "compute_mode"}[family]
    with pytest.raises(ValueError, match=why):
        families.rebuild(family, f"gpu.0.{setting}", params, Host(Path("/nonexistent")), None)
    with pytest.raises(ValueError, match="does not match"):
        families.rebuild(
            family, "gpu.1.power_limit", {"index": "0", "pci_bus_id": "0000:18:00.0"}, Host(Path("/")), None
        )


# -- the H200 recording (read-only, tests/gpu/record_nvml.py on the lent GPU) replayed ----------------------------
def h200() -> NvmlDouble:
    return NvmlDouble.from_file(H200 / "nvml.json")


def test_the_h200_recording_has_the_real_calls_shapes() -> None:
    (dev,) = h200().rec["devices"]
    assert dev["name"] == "NVIDIA H200"
    assert dev["power_limit_constraints_mw"] == [200000, 700000]  # pynvml: a list [min, max] in mW
    assert dev["power_limit_mw"] == dev["power_default_limit_mw"] == 700000
    assert dev["supported_memory_clocks"] == [3201, 2201]  # highest first, as the driver lists them
    assert sorted(dev["supported_graphics_clocks"]) == ["2201", "3201"]
    assert dev["supported_graphics_clocks"]["3201"][0] == 1980 and dev["supported_graphics_clocks"]["3201"][-1] == 345
    assert dev["applications_clocks"] == dev["default_applications_clocks"] == {"graphics": 1980, "memory": 3201}
    assert dev["ecc_mode"] == [1, 1] and dev["ecc_uncorrected_aggregate"] == 0
    assert "error" in dev["locked_clocks"]  # NVML has no getter: why clocks are application clocks
    assert dev["mig_mode"] == [0, 0] and dev["compute_mode"] == 0
    # the same numbers nvidia-smi printed on that machine
    csv = (H200 / "nvidia-smi-query.csv").read_text()
    assert "700.00 W, 700.00 W, 200.00 W, 700.00 W, 1980 MHz, 3201 MHz, 1980 MHz, Default, Enabled, Enabled" in csv


def test_the_h200_replays_compliant_and_doctor_passes() -> None:
    double = h200()
    host = Host(H100_ROOT)
    nvml = Nvml.open(lambda: double)
    ts = families.build_tunables(parse_config(ALL, "c"), discover(host, nvml), host, nvml)
    got = {o.id: (o.status, o.current, o.message) for o in engine.verify(ts)}
    assert got == {
        "gpu.0.power_limit": ("ok", "700 W", "default 700 W, range 200 W to 700 W"),
        "gpu.0.clocks": ("ok", "graphics=1980 memory=3201", "top supported: graphics=1980 memory=3201"),
        "gpu.0.compute_mode": ("ok", "Default", ""),
    }
    probe = Probe(host, parse_config("", "c"), discover(host, nvml), nvml, sleep=lambda _s: None)
    results = {r.id: r for r in run_all(probe, ("gpu",))}
    assert (results["gpu.power_limit"].status, results["gpu.power_limit"].current) == (
        "pass",
        "700 W (default 700 W, max 700 W) on 1 GPU(s)",
    )
    assert (results["gpu.clocks"].status, results["gpu.clocks"].current) == (
        "pass",
        "graphics=1980 memory=3201 on 1 GPU(s)",
    )
    assert (results["gpu.ecc"].status, results["gpu.ecc"].current) == (
        "pass",
        "enabled, uncorrected volatile 0, aggregate 0 on 1 GPU(s)",
    )
    assert double.setter_calls == []


def test_a_board_without_the_setting_is_a_skip_not_a_failure(hgx: FakeHost, hgx_nvml: NvmlDouble) -> None:
    """A GeForce or a vGPU answers Not Supported to the application clock and power queries."""
    hgx_nvml.rec["devices"][0]["applications_clocks"] = {"error": "Not Supported"}
    hgx_nvml.rec["devices"][1]["power_limit_mw"] = {"error": "Not Supported"}
    _, _, ts, journal = session(hgx, hgx_nvml, '[gpu]\npower_limit = "max"\nclocks = "max"\n')
    out = {o.id: o for o in engine.apply(ts, journal, log_results=False)}
    assert (out["gpu.0.clocks"].status, out["gpu.0.clocks"].message) == (
        engine.SKIPPED,
        "GPU 0 (0000:18:00.0): nvmlDeviceGetApplicationsClock: Not Supported",
    )
    assert out["gpu.1.power_limit"].status == engine.SKIPPED


def test_watts_are_kept_to_the_milliwatt(hgx: FakeHost, hgx_nvml: NvmlDouble) -> None:
    assert parse_config("[gpu]\npower_limit = 612.345\n", "c").gpu.power_limit == "612.345"  # type: ignore[union-attr]
    assert parse_config("[gpu]\npower_limit = 650\n", "c").gpu.power_limit == "650"  # type: ignore[union-attr]
    _, nvml, ts, journal = session(hgx, hgx_nvml, "[gpu]\npower_limit = 612.345\n")
    out = engine.apply(ts, journal, log_results=False)
    assert {(o.status, o.current) for o in out} == {(engine.CHANGED, "612.345 W")}
    assert nvml.power_limits("00000000:18:00.0").current == 612345


def test_a_limit_no_gpu_takes_is_exit_2_in_one_line_and_nothing_changes(
    hgx: FakeHost, hgx_nvml: NvmlDouble, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = hgx.root.parent / "gpu.toml"
    cfg.write_text("[gpu]\npersistence_mode = true\npower_limit = 4000\n")
    cfg.chmod(0o600)
    rc = cli.main(["--root", str(hgx.root), "--config", str(cfg), "apply"], nvml_opener=opener_for(hgx_nvml))
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert f"{cfg}:3: gpu.power_limit = 4000: out of range: a GPU power limit is 10 to 3000 W" in err
    assert hgx_nvml.setter_calls == [] and hgx_nvml.set_calls == []


def test_only_selects_one_gpus_setting(hgx: FakeHost, hgx_nvml: NvmlDouble, capsys: pytest.CaptureFixture[str]) -> None:
    left_by_an_earlier_job(hgx_nvml)
    rc, applied = cli_run(hgx.root, capsys, hgx_nvml, ALL, "apply", "--only", "gpu.2.power_limit", "--json")
    assert rc == 0 and [(r["id"], r["status"]) for r in applied["results"]] == [("gpu.2.power_limit", "changed")]
    assert [c[0] for c in hgx_nvml.setter_calls] == ["nvmlDeviceSetPowerManagementLimit"]
