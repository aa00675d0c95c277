"""Fixtures of the VM test bed (see docs/vm-testbed.md). Runs only with ``-m vm``."""

from __future__ import annotations

import glob
import os
import sys
import time
from pathlib import Path

import pytest
from _pytest.terminal import TerminalReporter

# tests/vm for the bed's helpers, tests/ for hwloc_peer (shared with the unit suite; stdlib only)
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

import vm as vmbed

REPO = Path(__file__).resolve().parents[2]
SUITE_T0 = time.monotonic()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The bed boots qemu guests for many minutes: only when asked for with ``-m vm``."""
    markexpr = config.getoption("markexpr", "") or ""
    if "vm" in markexpr and "not vm" not in markexpr:
        return
    skip = pytest.mark.skip(reason="VM test bed: run with `pytest -m vm tests/vm` (.ci/vm.sh)")
    here = str(Path(__file__).resolve().parent)
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: TerminalReporter) -> None:
    if not vmbed.timings:
        return
    terminalreporter.section("VM test bed timings")
    for key, value in sorted(vmbed.timings.items()):
        terminalreporter.write_line(f"{key:28s} {value:8.1f}")
    terminalreporter.write_line(f"{'suite_wall_s':28s} {time.monotonic() - SUITE_T0:8.1f}")


@pytest.fixture(scope="session")
def bed_ready() -> None:
    why = vmbed.qemu_available()
    if why is not None:
        pytest.skip(why)


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory, bed_ready: None) -> Path:
    keep = os.environ.get("VLLM_NODEAGENT_VM_WORKDIR")
    if keep:
        path = Path(keep)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp("vmbed")


@pytest.fixture(scope="session")
def ssh_key(workdir: Path) -> Path:
    """A throw-away key for this run; the guest gets its public half on the kernel command line."""
    return vmbed.make_key(workdir)


@pytest.fixture(scope="session")
def deb_path() -> Path:
    """The .deb under test: $VLLM_NODEAGENT_DEB, else the newest packaging/out/*.deb."""
    env = os.environ.get("VLLM_NODEAGENT_DEB")
    if env:
        return Path(env).resolve()
    debs = sorted(glob.glob(str(REPO / "packaging" / "out" / "*.deb")), key=os.path.getmtime)
    if not debs:
        pytest.skip("no .deb in packaging/out: run `make -C packaging deb` first (.ci/vm.sh does)")
    return Path(debs[-1])


@pytest.fixture(scope="session")
def standin_path() -> Path:
    return Path(__file__).resolve().parent / "standin_vllm.py"
