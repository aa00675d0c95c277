"""Builds a readiness Probe over a fake tree with a config text (shared by the checks tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from fakehost import FakeHost
from nvml_double import NvmlDouble

from vllm_nodeagent.checks import CheckResult, Probe, run_all
from vllm_nodeagent.checks.base import SpaceFn
from vllm_nodeagent.config import load_config
from vllm_nodeagent.host import Host
from vllm_nodeagent.nvml import Nvml
from vllm_nodeagent.topology import discover

GIB = 1 << 30


def probe(h: FakeHost, config: str = "", nvml: Optional[NvmlDouble] = None, space: Optional[SpaceFn] = None) -> Probe:
    cfg = h.root.parent / "checks.toml"
    cfg.write_text(config)
    cfg.chmod(0o600)
    host = Host(h.root)
    session = Nvml.open(lambda: nvml) if nvml is not None else None
    return Probe(
        host,
        load_config(str(cfg), Path("/nonexistent")),
        discover(host, session),
        session,
        space_fn=space or (lambda p: (64 * GIB, 60 * GIB)),
    )


def results(p: Probe, area: str) -> dict[str, CheckResult]:
    return {r.id: r for r in run_all(p, (area,))}


def user(h: FakeHost, name: str = "vllm", uid: int = 998, home: str = "/var/lib/vllm") -> None:
    h.write("/etc/passwd", f"root:x:0:0:root:/root:/bin/bash\n{name}:x:{uid}:{uid}::{home}:/usr/sbin/nologin\n")
    h.write("/etc/group", f"root:x:0:\n{name}:x:{uid}:\nvideo:x:44:{name}\n")


def live_vllm(h: FakeHost, pid: int = 4242, comm: str = "vllm", uid: int = 998, **files: Any) -> None:
    h.write("/var/lib/vllm-nodeagent/vllm.pid", str(pid))
    h.write(f"/proc/{pid}/comm", comm)
    h.write(f"/proc/{pid}/status", f"Name:\t{comm}\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")
    h.write(f"/proc/{pid}/stat", f"{pid} ({comm}) S 1 {pid} {pid}")
    for name, text in files.items():
        h.write(f"/proc/{pid}/{name}", text)
