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
        "field_values",
        "compute_mode",
        "mig_mode",
        "memory",
        "compute_processes",
        "pcie",
        "utilization_gpu",
        "fabric",
    ):
        assert [d[key] for d in rec["devices"]] == [d[key] for d in fed["devices"]], key
    assert rec["devices"][0]["clocks_event_reasons"] == [1, 1, 1]
    assert rec["p2p_read"] == fed["p2p_read"] and rec["cuda_driver_version"] == 13000
