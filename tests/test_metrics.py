"""The Prometheus textfile: own registry, atomic write, the documented series."""

from __future__ import annotations

from pathlib import Path

from vllm_nodeagent.metrics import Metrics


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
