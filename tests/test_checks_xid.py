"""Readiness check 5 (Xid/SXid in the kernel log) on fake /dev/kmsg files, and on the real /dev/kmsg."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from checkhelp import probe, results
from conftest import requires_root
from fakehost import FakeHost, vm_no_gpu

from vllm_nodeagent.checks import xid

KMSG = (
    "6,1001,5000000,-;NVRM: loading NVIDIA UNIX Open Kernel Module for x86_64  580.159.04\n"
    "4,1002,9000000,-;NVRM: Xid (PCI:0000:18:00): 31, pid=4300, name=python3, Ch 00000008, intr 00000000\n"
    " SUBSYSTEM=pci\n"
    "4,1003,9000100,-;NVRM: Xid (PCI:0000:18:00): 31, pid=4300, name=python3, Ch 00000008\n"
)


def test_application_xids_warn(hgx: FakeHost) -> None:
    hgx.write("/dev/kmsg", KMSG)
    r = results(probe(hgx), "xid")["gpu.xid"]
    assert r.status == "warn"
    assert r.current == "Xid 31 x2 on 0000:18:00: GPU memory page fault (application fault)"


def test_hardware_xid_and_fatal_sxid_fail(hgx: FakeHost) -> None:
    hgx.write(
        "/dev/kmsg",
        KMSG + "3,1004,9999,-;NVRM: Xid (PCI:0000:9a:00): 79, pid=0, GPU has fallen off the bus.\n"
        "3,1005,10000,-;nvidia-nvswitch2: SXid (PCI:0000:05:00.0): 12028, Non-fatal, Link 44 egress error\n",
    )
    r = results(probe(hgx), "xid")["gpu.xid"]
    assert r.status == "fail" and "Xid 79 x1 on 0000:9a:00: GPU has fallen off the bus" in (r.current or "")
    assert "SXid 12028 x1 on 0000:05:00.0: non-fatal" in (r.current or "")
    events = xid.parse_events("nvidia-nvswitch0: SXid (PCI:0000:06:00.0): 22013, Fatal, Link 10 (0x1) minion\n")
    assert xid.severity(*[events[0][0], events[0][2], events[0][3]])[0] == "fail"


def test_unknown_code_warns_with_a_pointer() -> None:
    assert xid.severity("Xid", 999, "")[1].startswith("not in the table")


def test_clean_log_passes_and_skips(hgx: FakeHost, tmp_path: Path) -> None:
    hgx.write("/dev/kmsg", "6,1,1,-;Linux version 6.18\n")
    assert results(probe(hgx), "xid")["gpu.xid"].status == "pass"
    os.remove(hgx.root / "dev/kmsg")
    r = results(probe(hgx), "xid")["gpu.xid"]
    assert r.status == "skip" and "unreadable" in r.detail  # a fake tree never asks the real host's journal
    vm = vm_no_gpu(tmp_path / "vm")
    vm.write("/dev/kmsg", KMSG)
    assert results(probe(vm), "xid") == {}  # no GPU, no GPU checks


@requires_root
@pytest.mark.realhost
def test_real_dev_kmsg_is_read_to_its_end_without_blocking() -> None:
    from vllm_nodeagent.checks.base import Probe
    from vllm_nodeagent.config import Config
    from vllm_nodeagent.host import Host
    from vllm_nodeagent.topology import Topology

    p = Probe(Host("/"), Config(path="-"), Topology([], [], [], []))
    text = xid.read_kmsg(p)
    assert text is not None and "Linux version" in text  # the first record since boot, unless it wrapped


def test_journal_fallback_when_kmsg_is_hidden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vllm_nodeagent.checks.base import Probe
    from vllm_nodeagent.config import Config
    from vllm_nodeagent.host import Host
    from vllm_nodeagent.topology import Topology

    tool = tmp_path / "journalctl"
    tool.write_text("#!/bin/sh\necho 'NVRM: Xid (PCI:0000:18:00): 79, pid=0, GPU has fallen off the bus.'\n")
    tool.chmod(0o755)
    monkeypatch.setattr(xid, "read_kmsg", lambda probe: None)  # as under ProtectKernelLogs=yes
    monkeypatch.setattr(xid.shutil, "which", lambda name: str(tool))
    p = Probe(Host("/"), Config(path="-"), Topology([], [], [], []))
    text, source = xid.kernel_log(p)
    assert source == "journalctl -k -b" and xid.parse_events(text or "")[0][2] == 79
    hang = tmp_path / "hang"
    hang.write_text("#!/bin/sh\nexec sleep 30\n")
    hang.chmod(0o755)
    assert xid.read_journal([str(hang)], timeout_s=0.2) is None  # a wedged journal costs the timeout, no more
