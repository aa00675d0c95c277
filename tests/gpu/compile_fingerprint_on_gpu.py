"""Issue 23.4 on the lent GPU: the compile-cache fingerprint with real NVML (read-only: Get calls only).
Usage (repo root, on the GPU machine, agent wheels on PYTHONPATH): python3 tests/gpu/compile_fingerprint_on_gpu.py
Prints the fields for the image's torch venv, the time they take, and what changes without NVML."""

from __future__ import annotations

import json
import time

from vllm_nodeagent.host import Host
from vllm_nodeagent.nvml import Nvml
from vllm_nodeagent.serving import compile_cache as cc
from vllm_nodeagent.topology import discover

PYTHON = "/opt/torch/.venv/bin/python"  # the image's torch 2.11 (no vLLM there unless build-vllm-carry.sh ran)

t0 = time.perf_counter()
nvml = Nvml.open()
topo = discover(Host("/"), nvml)
t1 = time.perf_counter()
fields = cc.current_fields(PYTHON, {}, "/tmp/nomodel", [], topo, nvml, Host("/"))
t2 = time.perf_counter()
rec = cc.record(fields)
report = {"fields": fields, "digest": rec.get("digest"), "nvml_discover_s": round(t1 - t0, 3)}
report["fingerprint_s"] = round(t2 - t1, 4)
print(json.dumps(report, indent=1))
without = cc.current_fields(PYTHON, {}, "/tmp/nomodel", [], topo, None, Host("/"))
print("without NVML:", without["gpu"], "| differing:", cc.differing(rec, cc.record(without)))
nvml.close()
