"""Each setting family on fake roots: compliant, differs, kernel refuses, missing, and revert exactness."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import opener_for
from fakehost import FakeHost, SysfsHost, vm_no_gpu
from nvml_double import NvmlDouble

from vllm_nodeagent import cli
from vllm_nodeagent.config import SysctlSetting, parse_config
from vllm_nodeagent.host import Host
from vllm_nodeagent.nvml import Nvml
from vllm_nodeagent.settings import engine, restore
from vllm_nodeagent.settings.base import NotApplicable, TunableError
from vllm_nodeagent.settings.block import BlockScheduler
from vllm_nodeagent.settings.cpu import CpuGovernor
from vllm_nodeagent.settings.families import build_tunables
from vllm_nodeagent.settings.gpu import PersistenceMode
from vllm_nodeagent.settings.irq import IrqAffinity
from vllm_nodeagent.settings.irqbalance import Irqbalance
from vllm_nodeagent.settings.journal import Journal, JournalError
from vllm_nodeagent.settings.sysctl import Sysctl
from vllm_nodeagent.settings.thp import Thp
from vllm_nodeagent.topology import discover


def read(h: FakeHost, p: str) -> str:
    return (h.root / p.lstrip("/")).read_text().rstrip("\n")


@pytest.fixture
def host(hgx: FakeHost) -> Host:
    return SysfsHost(hgx.root)


@pytest.fixture
def journal(host: Host) -> Journal:
    return Journal(host, "/var/lib/vllm-nodeagent")


# --- sysctl -----------------------------------------------------------------------------------------------
def test_sysctl_floor_never_lowers(host: Host, hgx: FakeHost, journal: Journal) -> None:
    hgx.sysctl("vm.max_map_count", "8249672")  # the lent H100 host's value
    t = Sysctl.from_setting(host, SysctlSetting("vm.max_map_count", "262144", "floor"))
    o = engine.apply_one(t, journal)
    assert o.status == engine.OK and "above the floor" in o.message
    assert read(hgx, "/proc/sys/vm/max_map_count") == "8249672"
    # journaled as found, so a later drift + re-apply still reverts to the host's own value
    assert journal.entries()["sysctl.vm.max_map_count"].original == "8249672"
    hgx.sysctl("vm.max_map_count", "1000")
    assert engine.apply_one(t, journal).status == engine.CHANGED
    assert read(hgx, "/proc/sys/vm/max_map_count") == "262144"
    restore.revert(host, journal)
    assert read(hgx, "/proc/sys/vm/max_map_count") == "8249672"


def test_sysctl_exact_lowers(host: Host, hgx: FakeHost, journal: Journal) -> None:
    hgx.sysctl("vm.swappiness", "60")
    t = Sysctl.from_setting(host, SysctlSetting("vm.swappiness", "10", "exact"))
    assert engine.apply_one(t, journal).status == engine.CHANGED
    assert read(hgx, "/proc/sys/vm/swappiness") == "10"


def test_sysctl_triple_fieldwise_floor(host: Host, hgx: FakeHost, journal: Journal) -> None:
    hgx.sysctl("net.ipv4.tcp_rmem", "4096\t262144\t6291456")
    t = Sysctl.from_setting(host, SysctlSetting("net.ipv4.tcp_rmem", "4096 87380 134217728", "floor"))
    o = engine.apply_one(t, journal)
    assert o.status == engine.CHANGED
    # the default field (262144) was already above 87380: kept; max raised
    assert read(hgx, "/proc/sys/net/ipv4/tcp_rmem") == "4096 262144 134217728"
    assert journal.entries()["sysctl.net.ipv4.tcp_rmem"].original == "4096\t262144\t6291456"


def test_sysctl_missing_is_an_error(host: Host, journal: Journal) -> None:
    """A misspelt sysctl is not "not applicable here": apply refuses it and says to check the name."""
    t = Sysctl.from_setting(host, SysctlSetting("net.core.no_such_knob", "1", "exact"))
    o = engine.apply_one(t, journal)
    assert o.status == engine.NOT_CHANGED and "no such sysctl" in o.message and "check the name" in o.message
    assert engine.verify([t])[0].status == engine.MISSING


def test_kernel_refusal_fails_that_setting_only(host: Host, hgx: FakeHost, journal: Journal) -> None:
    # A directory where the file should be: the write fails with EISDIR, as a refusing kernel would.
    target = hgx.root / "proc/sys/net/core/rmem_max"
    target.unlink()
    target.mkdir()
    (target / "x").write_text("")
    cfg = parse_config('[sysctl]\n"net.core.rmem_max" = 134217728\n"vm.max_map_count" = 262144\n', "c")
    ts = build_tunables(cfg, discover(host), host)
    outcomes = {o.id: o for o in engine.apply(ts, journal)}
    assert outcomes["sysctl.net.core.rmem_max"].status == engine.FAILED
    assert outcomes["sysctl.vm.max_map_count"].status == engine.CHANGED
    assert read(hgx, "/proc/sys/vm/max_map_count") == "262144"


def test_written_but_kernel_reports_other(host: Host, hgx: FakeHost, journal: Journal) -> None:
    """Verify means read back: a kernel that clamps a value must not count as applied."""

    class Clamping(Sysctl):
        def write(self, value: str) -> None:
            super().write("100000")

    t = Clamping(host, "vm.max_map_count", "262144", "floor")
    o = engine.apply_one(t, journal)
    assert o.status == engine.FAILED and "the kernel reports 100000" in o.message


# --- THP --------------------------------------------------------------------------------------------------
def test_thp_bracket_value(host: Host, hgx: FakeHost, journal: Journal) -> None:
    t = Thp(host, "enabled", "madvise")
    assert t.read() == "always"
    assert engine.apply_one(t, journal).status == engine.CHANGED
    assert read(hgx, "/sys/kernel/mm/transparent_hugepage/enabled") == "always [madvise] never"


def test_thp_value_not_offered_is_an_error_naming_the_offered(host: Host, hgx: FakeHost, journal: Journal) -> None:
    hgx.thp("[always] never", "[always] never")
    with pytest.raises(TunableError, match="offers always, never, not 'madvise'"):
        Thp(host, "defrag", "madvise").read()
    o = engine.apply_one(Thp(host, "defrag", "madvise"), journal)
    assert o.status == engine.FAILED  # exit 1, like an unknown sysctl; it was a silent skip with exit 0


# --- block ------------------------------------------------------------------------------------------------
def test_block_noop_alias_on_blk_mq(host: Host, journal: Journal) -> None:
    t = BlockScheduler(host, "sda", "noop")
    o = engine.apply_one(t, journal)
    assert o.status == engine.CHANGED and o.desired == "none"
    assert '"noop" is called "none"' in t.note("none")


def test_block_scheduler_not_offered_is_an_error(host: Host, hgx: FakeHost, journal: Journal) -> None:
    hgx.write("/sys/devices/pci0000:00/0000:5e:00.0/block/nvme0n1/queue/scheduler", "[none] mq-deadline")
    o = engine.apply_one(BlockScheduler(host, "nvme0n1", "bfq"), journal)
    assert o.status == engine.FAILED and "offers none, mq-deadline, not 'bfq'" in o.message


def test_governor_not_offered_is_an_error(host: Host, hgx: FakeHost, journal: Journal) -> None:
    from vllm_nodeagent.settings.cpu import CpuGovernor

    o = engine.apply_one(CpuGovernor(host, "ondemand"), journal)  # the tree offers performance, powersave
    assert o.status == engine.FAILED and "governors performance, powersave, not 'ondemand'" in o.message


def test_block_globs_and_no_match(host: Host) -> None:
    cfg = parse_config("[block]\ndevices = ['nvme*']\nscheduler = 'mq-deadline'\n", "c")
    assert [t.id for t in build_tunables(cfg, discover(host), host)] == [
        "block.nvme0n1.scheduler",
        "block.nvme1n1.scheduler",
    ]
    cfg = parse_config("[block]\ndevices = ['xvd*']\nscheduler = 'none'\n", "c")
    (only,) = engine.verify(build_tunables(cfg, discover(host), host))
    assert only.status == engine.SKIPPED and "no block device matches xvd*" in only.message


# --- cpu --------------------------------------------------------------------------------------------------
def test_cpu_governor_every_policy_and_exact_revert(host: Host, hgx: FakeHost, journal: Journal) -> None:
    hgx.write("/sys/devices/system/cpu/cpufreq/policy7/scaling_governor", "performance")
    t = CpuGovernor(host, "performance")
    before = t.read()
    assert "policy7=performance" in before and "policy0=powersave" in before
    assert engine.apply_one(t, journal).status == engine.CHANGED
    assert t.read() == "performance"
    assert [o.status for o in restore.revert(host, journal)] == [engine.RESTORED]
    assert read(hgx, "/sys/devices/system/cpu/cpufreq/policy7/scaling_governor") == "performance"
    assert read(hgx, "/sys/devices/system/cpu/cpufreq/policy8/scaling_governor") == "powersave"


def test_cpu_governor_absent_in_vm(tmp_path: Path) -> None:
    h = vm_no_gpu(tmp_path / "vm")
    with pytest.raises(NotApplicable, match="no cpufreq"):
        CpuGovernor(Host(h.root), "performance").read()


def test_multifile_partial_refusal_rolls_back(host: Host, hgx: FakeHost) -> None:
    p5 = hgx.root / "sys/devices/system/cpu/cpufreq/policy5/scaling_governor"
    p5.unlink()
    p5.mkdir()  # refuses writes, but must still be readable for the test: give read a file elsewhere
    t = CpuGovernor(host, "performance")
    t.paths = {k: v for k, v in t.paths.items() if k in ("policy0", "policy1")}
    t.paths["policy5"] = "/sys/devices/system/cpu/cpufreq/policy5/scaling_governor"
    with pytest.raises(TunableError):
        t.write("performance")
    assert read(hgx, "/sys/devices/system/cpu/cpufreq/policy0/scaling_governor") == "powersave"


# --- GPU persistence (NVML double) ------------------------------------------------------------------------
def test_persistence_mode_via_nvml(host: Host, hgx_nvml: NvmlDouble, journal: Journal) -> None:
    nvml = Nvml.open(lambda: hgx_nvml)
    cfg = parse_config("[gpu]\npersistence_mode = true\n", "c")
    ts = build_tunables(cfg, discover(host, nvml), host, nvml)
    assert [t.id for t in ts] == [f"gpu.{i}.persistence_mode" for i in range(8)]
    outcomes = engine.apply(ts, journal)
    assert {o.status for o in outcomes} == {engine.CHANGED}
    assert len(hgx_nvml.set_calls) == 8 and all(m == 1 for _, m in hgx_nvml.set_calls)
    restore.revert(host, journal, nvml)
    assert all(v == 0 for v in hgx_nvml.persistence.values())


def test_persistence_owned_by_persistenced(host: Host, hgx: FakeHost, hgx_nvml: NvmlDouble, journal: Journal) -> None:
    hgx.write("/proc/4242/comm", "nvidia-persistenced")
    nvml = Nvml.open(lambda: hgx_nvml)
    t = PersistenceMode(host, nvml, 0, "0000:18:00.0", True)
    o = engine.apply_one(t, journal)
    assert o.status == engine.SKIPPED and "nvidia-persistenced (pid 4242)" in o.message
    assert hgx_nvml.set_calls == []


def test_persistence_without_nvml_is_skip(host: Host, journal: Journal) -> None:
    o = engine.apply_one(PersistenceMode(host, None, 0, "0000:18:00.0", True, "Driver Not Loaded"), journal)
    assert o.status == engine.SKIPPED and "Driver Not Loaded" in o.message


def test_persistence_set_refused(host: Host, journal: Journal) -> None:
    from nvml_double import hgx_8gpu_recording

    rec = hgx_8gpu_recording()
    rec["devices"][0]["set_persistence_error"] = "Insufficient Permissions"
    nvml = Nvml.open(lambda: NvmlDouble(rec))
    o = engine.apply_one(PersistenceMode(host, nvml, 0, "0000:18:00.0", True), journal)
    assert o.status == engine.FAILED and "Insufficient Permissions" in o.message


# --- IRQ --------------------------------------------------------------------------------------------------
def test_irq_affinity_pins_gpu_and_nic_irqs(host: Host, hgx: FakeHost, journal: Journal) -> None:
    cfg = parse_config("[irq]\nirqbalance = 'ignore'\naffinity = true\n", "c")
    ts = build_tunables(cfg, discover(host), host)
    ids = [t.id for t in ts]
    assert "irq.gpu0.affinity" in ids and "irq.ens9f0np0.affinity" in ids
    outcomes = {o.id: o for o in engine.apply(ts, journal)}
    assert outcomes["irq.gpu5.affinity"].status == engine.CHANGED
    assert read(hgx, "/proc/irq/122/smp_affinity_list") == "56-111"  # gpu5's first vector
    assert read(hgx, "/proc/irq/200/smp_affinity_list") == "0-55"  # NIC on node 0
    restore.revert(host, journal)
    assert read(hgx, "/proc/irq/122/smp_affinity_list") == "0-255"


def test_irq_subset_is_compliant(host: Host) -> None:
    t = IrqAffinity(host, "gpu0", [100], list(range(56)))
    assert t.compliant("3") and t.compliant("0-55") and not t.compliant("0-60") and not t.compliant("")


def test_irqbalance_not_applicable_under_root(host: Host) -> None:
    with pytest.raises(NotApplicable, match="no service manager under --root"):
        Irqbalance(host, "stop").read()


# --- journal ----------------------------------------------------------------------------------------------
def test_first_original_wins(host: Host, hgx: FakeHost, journal: Journal) -> None:
    t = Sysctl.from_setting(host, SysctlSetting("vm.max_map_count", "262144", "floor"))
    engine.apply_one(t, journal)
    hgx.sysctl("vm.max_map_count", "1000")  # drift
    engine.apply_one(t, journal)  # re-apply must not journal our own or the drifted value
    assert journal.entries()["sysctl.vm.max_map_count"].original == "65530"
    restore.revert(host, journal)
    assert read(hgx, "/proc/sys/vm/max_map_count") == "65530"
    assert not (hgx.root / "var/lib/vllm-nodeagent/originals.json").exists()


def test_corrupt_journal_refuses_to_guess(host: Host, hgx: FakeHost, journal: Journal) -> None:
    hgx.write("/var/lib/vllm-nodeagent/originals.json", "{not json")
    with pytest.raises(JournalError, match="not a journal of this agent"):
        journal.entries()
    t = Sysctl.from_setting(host, SysctlSetting("vm.max_map_count", "262144", "floor"))
    o = engine.apply_one(t, journal)
    assert o.status == engine.NOT_CHANGED and "refusing to guess" in o.message
    assert read(hgx, "/proc/sys/vm/max_map_count") == "65530"


def test_revert_after_config_changed(host: Host, hgx: FakeHost, journal: Journal) -> None:
    """Revert needs no config: the journal says how to rebuild each writer."""
    cfg = parse_config((Path(__file__).parent.parent / "etc/config.toml").read_text(), "c")
    before = {p: read(hgx, p) for p in ("/proc/sys/net/ipv4/tcp_wmem", "/sys/kernel/mm/transparent_hugepage/enabled")}
    engine.apply(build_tunables(cfg, discover(host), host), journal)
    assert read(hgx, "/sys/kernel/mm/transparent_hugepage/enabled") == "always [madvise] never"
    outcomes = restore.revert(host, journal)
    assert outcomes and all(o.status in (engine.RESTORED, engine.UNTOUCHED) for o in outcomes)
    assert {p: read(hgx, p) for p in before} == before


def test_drift_detected_and_reapplied(host: Host, hgx: FakeHost, journal: Journal) -> None:
    cfg = parse_config("[sysctl]\n'vm.max_map_count' = 262144\n[thp]\nenabled = 'madvise'\n", "c")
    ts = build_tunables(cfg, discover(host), host)
    engine.apply(ts, journal)
    assert engine.drift(ts, journal) == []
    hgx.write("/sys/kernel/mm/transparent_hugepage/enabled", "[always] madvise never")  # behind our back
    moved = engine.drift(ts, journal)
    assert [(o.id, o.current) for o in moved] == [("thp.enabled", "always")]
    engine.apply([t for t in ts if t.id == "thp.enabled"], journal)
    assert engine.drift(ts, journal) == []
    assert journal.entries()["thp.enabled"].original == "always"  # the first original, still


# --- CLI --------------------------------------------------------------------------------------------------
def run_cli(
    root: Path,
    capsys: pytest.CaptureFixture[str],
    *args: str,
    nvml: NvmlDouble | None = None,
    config: str | None = None,
) -> tuple[int, str]:
    argv = ["--root", str(root)]
    if config:
        cfg = root / "cfg.toml"
        cfg.write_text(config)
        cfg.chmod(0o600)
        argv += ["--config", str(cfg)]
    opener = opener_for(nvml) if nvml else None
    rc = cli.main([*argv, *args], nvml_opener=opener, host_cls=SysfsHost)
    return rc, capsys.readouterr().out


def test_cli_apply_dry_run_changes_nothing(hgx: FakeHost, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = (Path(__file__).parent.parent / "etc/config.toml").read_text()
    snapshot = {p: p.read_bytes() for p in hgx.root.rglob("*") if p.is_file() and not p.is_symlink()}
    rc, out = run_cli(hgx.root, capsys, "apply", "--dry-run", "--json", config=cfg)
    assert rc == 5  # changes pending (0 = nothing to do)
    statuses = {r["id"]: r["status"] for r in json.loads(out)["results"]}
    assert statuses["sysctl.vm.max_map_count"] == "would-change"
    assert statuses["cpu.governor"] == "would-change"
    after = {p: p.read_bytes() for p in snapshot}
    assert after == snapshot
    assert not (hgx.root / "var/lib/vllm-nodeagent/originals.json").exists()


def test_cli_apply_only_and_revert(hgx: FakeHost, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = (Path(__file__).parent.parent / "etc/config.toml").read_text()
    rc, out = run_cli(hgx.root, capsys, "apply", "--only", "sysctl", "--json", config=cfg)
    assert rc == 0
    ids = {r["id"] for r in json.loads(out)["results"]}
    assert ids == {
        "sysctl.vm.max_map_count",
        "sysctl.net.core.rmem_max",
        "sysctl.net.core.wmem_max",
        "sysctl.net.ipv4.tcp_rmem",
        "sysctl.net.ipv4.tcp_wmem",
    }
    assert read(hgx, "/proc/sys/net/core/rmem_max") == "134217728"
    rc, out = run_cli(hgx.root, capsys, "revert", config=cfg)
    assert rc == 0 and [ln.split()[0] for ln in out.splitlines()].count("restored") == 5
    assert out.splitlines()[-1] == "revert: 5 restored"  # the summary line
    assert read(hgx, "/proc/sys/net/core/rmem_max") == "212992"
    rc, out = run_cli(hgx.root, capsys, "revert", config=cfg)
    assert rc == 0 and "nothing to revert" in out


def test_cli_apply_exit_1_when_something_fails(hgx: FakeHost, capsys: pytest.CaptureFixture[str]) -> None:
    target = hgx.root / "proc/sys/vm/max_map_count"
    target.unlink()
    target.mkdir()
    (target / "x").write_text("")
    rc, out = run_cli(hgx.root, capsys, "apply", config="[sysctl]\n'vm.max_map_count' = 262144\n")
    assert rc == 1 and "failed" in out


def test_cli_only_matching_nothing(hgx: FakeHost, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = hgx.root / "c.toml"
    cfg.write_text("[thp]\nenabled = 'never'\n")
    cfg.chmod(0o600)
    rc = cli.main(["--root", str(hgx.root), "--config", str(cfg), "apply", "--only", "nosuch"], host_cls=SysfsHost)
    out, err = capsys.readouterr()
    assert rc == 2 and "matches no configured setting" in err and out == ""  # an error: stderr, not a result
