"""tests/gpu/record_nvml.py records every answer the readiness checks ask, in the shape the double replays:
recording the double itself must give back the answers it was fed."""

from __future__ import annotations

import io
import json
import sys
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest
from nvml_double import NvmlDouble, hgx_8gpu_recording

GPU_DIR = Path(__file__).parent / "gpu"


class Recordable(NvmlDouble):
    """The double plus the few calls only the recorder makes; handles by index, as pynvml's are opaque."""

    def nvmlSystemGetNVMLVersion(self) -> str:
        return "13.580.159.04"

    def nvmlDeviceGetNumaNodeId(self, h: dict[str, Any]) -> int:
        raise self.NVMLError("Not Supported")

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: dict[str, Any]) -> int:
        return int(h["clocks_event_reasons"][0])


def test_recording_the_double_gives_back_its_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    fed = hgx_8gpu_recording()
    fed["devices"][3]["remapped_rows"] = [0, 1, 1, 0]
    fed["devices"][3]["mig_mode"] = {"error": "Not Supported"}
    double = Recordable(fed)
    monkeypatch.setitem(sys.modules, "pynvml", double)
    monkeypatch.syspath_prepend(str(GPU_DIR))
    monkeypatch.setattr("time.sleep", lambda s: None)
    import record_nvml

    out = io.StringIO()
    with redirect_stdout(out):
        assert record_nvml.main() == 0
    rec = json.loads(out.getvalue())
    for key in (
        "remapped_rows",
        "ecc_uncorrected_volatile",
        "ecc_corrected_volatile",
        "compute_mode",
        "mig_mode",
        "memory",
        "compute_processes",
        "pcie",
        "utilization_gpu",
        "fabric",
        # issue 27: what the power limit, clocks and ECC settings and checks read
        "power_limit_mw",
        "power_default_limit_mw",
        "power_limit_constraints_mw",
        "supported_memory_clocks",
        "supported_graphics_clocks",
        "applications_clocks",
        "default_applications_clocks",
        "ecc_mode",
        "ecc_uncorrected_aggregate",
        "ecc_corrected_aggregate",
    ):
        assert [d[key] for d in rec["devices"]] == [d[key] for d in fed["devices"]], key
    assert [d["field_values"]["230"] for d in rec["devices"]] == [0] * 8
    assert rec["devices"][0]["clocks_event_reasons"] == [1, 1, 1]
    assert double.setter_calls == []  # the recorder changed nothing


def test_the_recorder_calls_no_setter() -> None:
    """Run on a lent GPU whose settings are not ours: only Get calls may appear in it (issue 27)."""
    source = (GPU_DIR / "record_nvml.py").read_text()
    import re

    writers = re.findall(r"nvml(?:Device|System|Gpu|Vgpu)?(?:Set|Reset|Clear|Register|Modify)[A-Z]\w*", source)
    assert writers == []
    assert "nvmlDeviceGetPowerManagementLimitConstraints" in source  # the pattern does see NVML names here
