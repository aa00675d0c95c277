"""The Prometheus textfile: the documented series, no link followed on the way, the distro's directory, doctor's
check of that directory, and drift counted once per change."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from checkhelp import probe
from fakehost import FakeHost
from nvml_double import NvmlDouble

from vllm_nodeagent.checks import metrics as metrics_check
from vllm_nodeagent.daemon.host_keeper import summarize
from vllm_nodeagent.daemon.metrics import DEBIAN_DIR, GENERIC_DIR, Metrics, default_textfile
from vllm_nodeagent.host import Host


def value_of(text: str, series: str) -> float:
    return float(next(line.rsplit(" ", 1)[1] for line in text.splitlines() if line.startswith(series + " ")))


def test_textfile_series(tmp_path: Path) -> None:
    path = tmp_path / "vna.prom"
    m = Metrics(str(path))
    m.set_compliance("sysctl.vm.max_map_count", True)
    m.set_compliance("thp.enabled", False)
    m.add_drift("thp.enabled")
    m.add_restart()
    m.set_up(True)
    m.set_prewarm(1234, 0.5)
    m.set_phase("gating")
    m.write()
    text = path.read_text()
    assert 'vllm_nodeagent_setting_compliant{id="sysctl.vm.max_map_count"} 1.0' in text
    assert 'vllm_nodeagent_setting_compliant{id="thp.enabled"} 0.0' in text
    assert 'vllm_nodeagent_drift_events_total{id="thp.enabled"} 1.0' in text
    assert 'vllm_nodeagent_drift_events_total{id="sysctl.vm.max_map_count"} 0.0' in text  # from 0, for increase()
    assert "vllm_nodeagent_drift_total 1.0" in text
    assert "vllm_nodeagent_vllm_restarts_total 1.0" in text
    assert "vllm_nodeagent_vllm_up 1.0" in text
    assert "vllm_nodeagent_prewarm_resident_bytes 1234.0" in text
    assert "vllm_nodeagent_prewarm_resident_ratio 0.5" in text
    assert 'vllm_nodeagent_vllm_phase{phase="gating"} 1.0' in text
    assert 'vllm_nodeagent_vllm_phase{phase="serving"} 0.0' in text
    assert 'vllm_nodeagent_build_info{version="0.1.0",python="' in text
    assert "_created" not in text  # prometheus_client's per-counter creation time: noise in a textfile
    assert "process_" not in text and "python_gc" not in text
    assert [p.name for p in tmp_path.iterdir()] == ["vna.prom"]  # no temp file left behind
    assert path.stat().st_mode & 0o777 == 0o644  # node_exporter runs as its own user


def test_counters_start_at_zero(tmp_path: Path) -> None:
    """increase() needs a first sample before the first event; a counter born at 1 hides that event."""
    m = Metrics(str(tmp_path / "x.prom"))
    m.write()
    text = (tmp_path / "x.prom").read_text()
    for name in ("vllm_nodeagent_drift_total", "vllm_nodeagent_vllm_restarts_total", "vllm_nodeagent_vllm_up"):
        assert value_of(text, name) == 0


@pytest.mark.skipif(not shutil.which("promtool"), reason="promtool not installed (Debian package prometheus)")
def test_promtool_accepts_the_textfile(tmp_path: Path) -> None:
    m = Metrics(str(tmp_path / "x.prom"))
    m.set_compliance('a"b\\c', True)  # escaping
    m.set_checks({"gpu.memory_health": 0})
    m.add_component_failure("settings")
    m.heartbeat(1.8e9)
    text = m.render()
    r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def test_disabled_writes_nothing(tmp_path: Path) -> None:
    m = Metrics("")
    m.set_up(True)
    m.write(force=True)
    assert not m.enabled and list(tmp_path.iterdir()) == []


def test_a_missing_directory_is_created_root_0755(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        m = Metrics("/var/lib/prometheus/node-exporter/vllm_nodeagent.prom", Host(tmp_path))
        m.write(force=True)
    finally:
        os.umask(old)
    d = tmp_path / "var/lib/prometheus/node-exporter"
    assert d.stat().st_mode & 0o777 == 0o755 and d.stat().st_uid == os.getuid()
    assert (d / "vllm_nodeagent.prom").read_text().startswith("# HELP")


def test_unwritable_path_is_logged_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    m = Metrics(str(tmp_path / "file" / "x.prom"))  # a file on the way: no directory can be made
    m.set_up(False)
    m.write()  # must not raise


def test_a_link_anywhere_on_the_way_is_refused(tmp_path: Path) -> None:
    """A link in the path, here at the last directory, is not followed: nothing is written where it points."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "var/lib/prometheus").mkdir(parents=True)
    (tmp_path / "var/lib/prometheus/node-exporter").symlink_to(elsewhere)
    m = Metrics(f"{DEBIAN_DIR}/vllm_nodeagent.prom", Host(tmp_path))
    m.write(force=True)
    assert list(elsewhere.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: chown to an unprivileged user and act as that user")
def test_debian_ownership_and_a_link_swapped_in_by_the_prometheus_user() -> None:
    """Debian: /var/lib/prometheus belongs to the prometheus user, the textfile dir below it to root. That user
    (here the real unprivileged ``nobody``, acting in its own process) renames the dir away and puts a link to a
    root-only directory in its place: the next write must not land there."""
    tmp_path = Path(tempfile.mkdtemp(prefix="vna-metrics-"))  # pytest's tmp dirs are 0700: nobody cannot enter
    try:
        link_swap(tmp_path)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def link_swap(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    root = tmp_path / "root"
    prom = root / "var/lib/prometheus"
    prom.mkdir(parents=True)
    for d in (root, root / "var", root / "var/lib"):
        d.chmod(0o755)
    os.chown(prom, 65534, 65534)
    prom.chmod(0o755)
    (prom / "node-exporter").mkdir(mode=0o755)
    secret = tmp_path / "root-only"
    secret.mkdir(mode=0o700)
    m = Metrics(f"{DEBIAN_DIR}/vllm_nodeagent.prom", Host(root))
    m.write(force=True)
    assert (prom / "node-exporter/vllm_nodeagent.prom").exists()  # the normal case works

    swap = f"mv {prom}/node-exporter {prom}/old && ln -s {secret} {prom}/node-exporter"
    subprocess.run(["sh", "-c", swap], user=65534, group=65534, check=True)
    assert (prom / "node-exporter").is_symlink() and (prom / "node-exporter").lstat().st_uid == 65534
    m.set_up(True)
    m.write()
    assert list(secret.iterdir()) == []  # nothing followed the link
    assert m._write_failed  # logged once as metrics_write_failed


def test_default_directory_per_distro(tmp_path: Path) -> None:
    host = Host(tmp_path)
    (tmp_path / "etc").mkdir()
    osr = tmp_path / "etc/os-release"
    osr.write_text('ID=debian\nVERSION_ID="12"\n')
    assert default_textfile(host) == f"{DEBIAN_DIR}/vllm_nodeagent.prom"
    osr.write_text("ID=ubuntu\nID_LIKE=debian\n")
    assert default_textfile(host) == f"{DEBIAN_DIR}/vllm_nodeagent.prom"
    osr.write_text('ID="rocky"\nID_LIKE="rhel centos fedora"\n')
    assert default_textfile(host) == f"{GENERIC_DIR}/vllm_nodeagent.prom"
    osr.unlink()
    assert default_textfile(host) == f"{GENERIC_DIR}/vllm_nodeagent.prom"


UNIT = "[Service]\nProtectSystem=strict\nReadWritePaths=-/var/lib/node_exporter/textfile_collector\n"


def doctor_says(hgx: FakeHost, nvml: NvmlDouble, textfile: str) -> metrics_check.CheckResult:
    p = probe(hgx, f"[agent]\nmetrics_textfile = '{textfile}'\n", nvml)
    (result,) = metrics_check.checks(p)
    return result


def test_doctor_checks_the_textfile_directory(hgx: FakeHost, hgx_nvml: NvmlDouble) -> None:
    path = f"{DEBIAN_DIR}/vllm_nodeagent.prom"
    missing = doctor_says(hgx, hgx_nvml, path)
    assert missing.status == "fail" and "install -d -m 0755" in missing.hint
    d = hgx.root / DEBIAN_DIR.lstrip("/")
    d.parent.mkdir(parents=True)
    d.symlink_to(hgx.root / "tmp")
    linked = doctor_says(hgx, hgx_nvml, path)
    assert linked.status == "fail" and "symbolic link" in linked.detail
    d.unlink()
    d.mkdir(mode=0o755)
    assert doctor_says(hgx, hgx_nvml, path).status == "pass"  # no unit installed here: nothing more to judge
    unit = hgx.root / "lib/systemd/system/vllm-nodeagent.service"
    unit.parent.mkdir(parents=True)
    unit.write_text(UNIT)
    sandboxed = doctor_says(hgx, hgx_nvml, path)
    assert sandboxed.status == "fail" and f"ReadWritePaths={DEBIAN_DIR}" in sandboxed.hint
    dropin = hgx.root / metrics_check.DROPIN.lstrip("/")
    dropin.parent.mkdir(parents=True)
    dropin.write_text(f"[Service]\nReadWritePaths={DEBIAN_DIR}\n")
    assert doctor_says(hgx, hgx_nvml, path).status == "pass"
    assert doctor_says(hgx, hgx_nvml, "").status == "skip"


def test_the_shipped_unit_allows_both_distro_directories() -> None:
    unit = (Path(__file__).resolve().parent.parent / "systemd/vllm-nodeagent.service").read_text()
    paths = metrics_check.writable_paths([unit])
    assert metrics_check.covered(DEBIAN_DIR, paths) and metrics_check.covered(GENERIC_DIR, paths)


def test_a_governor_drift_is_one_short_line() -> None:
    value = " ".join(f"policy{i}=performance" for i in range(190)) + " policy190=powersave policy191=powersave"
    assert len(value) > 4000
    short = summarize(value)
    assert short is not None and len(short) < 200
    assert "powersave x2 (policy190 policy191)" in short and "performance x190" in short
    assert summarize("100") == "100"


def test_readiness_checks_and_heartbeat_in_the_textfile(hgx: FakeHost, hgx_nvml: NvmlDouble) -> None:
    """The daemon exports doctor's readiness checks by id; the loop's heartbeat moves every round."""
    from vllm_nodeagent.context import Context
    from vllm_nodeagent.daemon.host_keeper import HostKeeper
    from vllm_nodeagent.daemon.loop import Loop

    hgx.sysctl("kernel.numa_balancing", "1")
    prom = hgx.root / "var/lib/node_exporter/vna.prom"
    prom.parent.mkdir(parents=True)
    cfg = "[agent]\nmetrics_textfile = '/var/lib/node_exporter/vna.prom'\n"
    p = probe(hgx, cfg, hgx_nvml)
    ctx = Context(host=Host(hgx.root), config=p.config, config_arg=None, log_format="json")
    loop = Loop(ctx, topology=p.topo)
    host = HostKeeper(loop)
    loop.nvml = p.nvml
    host._readiness()
    loop.metrics.write()
    text = prom.read_text()
    assert 'vllm_nodeagent_check_status{id="kernel.numa_balancing"} 1.0' in text  # warn
    assert 'vllm_nodeagent_check_status{id="gpu.memory_health"} 0.0' in text  # pass
    assert 'vllm_nodeagent_check_status{id="limits.vllm"} -1.0' in text  # skip
    assert 'vllm_nodeagent_check_status{id="agent.metrics_textfile"} 0.0' in text
    assert value_of(text, "vllm_nodeagent_last_check_timestamp_seconds") > 1.7e9
    loop.metrics.heartbeat(0)
    loop.metrics.write()
    assert value_of(prom.read_text(), "vllm_nodeagent_heartbeat_timestamp_seconds") == 0
    loop.tick(loop.clock())  # a round with nothing due still beats
    assert value_of(prom.read_text(), "vllm_nodeagent_heartbeat_timestamp_seconds") > 1.7e9


def test_every_exported_check_id_is_documented(hgx: FakeHost, hgx_nvml: NvmlDouble) -> None:
    """vllm_nodeagent_check_status{id} is a contract: each id the daemon exports has its row in docs/doctor.md
    (ids are stable; an id renamed without the docs fails here)."""
    from vllm_nodeagent.checks import run_all

    doc = (Path(__file__).resolve().parent.parent / "docs/doctor.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"`([a-z0-9_]+(?:\.[a-z0-9_.*]+)?)`", doc))
    p = probe(hgx, "[agent]\nmetrics_textfile = 'auto'\n", hgx_nvml)
    ids = {r.id for r in run_all(p)}
    assert len(ids) >= 15
    missing = {
        i for i in ids if i not in documented and not any(d.endswith("*") and i.startswith(d[:-1]) for d in documented)
    }
    assert missing == set()
