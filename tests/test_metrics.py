"""The Prometheus textfile: own registry, atomic write, the documented series."""

from __future__ import annotations

from pathlib import Path

from fakehost import FakeHost
from nvml_double import NvmlDouble

from vllm_nodeagent.daemon.metrics import Metrics


def test_textfile_series(tmp_path: Path) -> None:
    path = tmp_path / "vna.prom"
    m = Metrics(str(path))
    m.set_compliance("sysctl.vm.max_map_count", True)
    m.set_compliance("thp.enabled", False)
    m.add_drift("thp.enabled")
    m.add_restart()
    m.set_up(True)
    m.set_prewarm_bytes(1234)
    m.write()
    text = path.read_text()
    assert 'vllm_nodeagent_setting_compliant{id="sysctl.vm.max_map_count"} 1.0' in text
    assert 'vllm_nodeagent_setting_compliant{id="thp.enabled"} 0.0' in text
    assert 'vllm_nodeagent_drift_events_total{id="thp.enabled"} 1.0' in text
    assert "vllm_nodeagent_drift_total 1.0" in text
    assert "vllm_nodeagent_vllm_restarts_total 1.0" in text
    assert "vllm_nodeagent_vllm_up 1.0" in text
    assert "vllm_nodeagent_prewarm_resident_bytes 1234.0" in text
    assert "process_" not in text and "python_gc" not in text  # own registry only
    assert [p.name for p in tmp_path.iterdir()] == ["vna.prom"]  # no temp file left behind


def test_disabled_writes_nothing(tmp_path: Path) -> None:
    m = Metrics("")
    m.set_up(True)
    m.write(force=True)
    assert not m.enabled and list(tmp_path.iterdir()) == []


def test_unwritable_path_is_logged_not_fatal(tmp_path: Path) -> None:
    m = Metrics(str(tmp_path / "missing-dir" / "x.prom"))
    m.set_up(False)
    m.write()  # must not raise


def test_readiness_checks_and_heartbeat_in_the_textfile(hgx: FakeHost, hgx_nvml: NvmlDouble) -> None:
    """The daemon exports doctor's readiness checks by id and a heartbeat that moves even when nothing changed."""
    from checkhelp import probe

    from vllm_nodeagent.context import Context
    from vllm_nodeagent.daemon.host_keeper import HostKeeper
    from vllm_nodeagent.daemon.loop import Loop
    from vllm_nodeagent.host import Host

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
    first = float(
        next(
            line.split()[1]
            for line in text.splitlines()
            if line.startswith("vllm_nodeagent_last_check_timestamp_seconds ")
        )
    )
    assert first > 1.7e9
    loop.metrics.last_check.set(0)
    prom.write_text("")
    host._readiness()
    loop.metrics.write()  # nothing else changed: the heartbeat alone makes it write
    second = float(
        next(
            line.split()[1]
            for line in prom.read_text().splitlines()
            if line.startswith("vllm_nodeagent_last_check_timestamp_seconds ")
        )
    )
    assert second >= first
