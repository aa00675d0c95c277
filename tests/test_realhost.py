"""apply -> verify -> drift -> detect -> revert on this machine's real /proc/sys and /sys (root only).

Every test records the kernel's own values first and a finalizer writes them back whatever happens, so a failing
test cannot leave the CI machine changed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest
from conftest import requires_root

from vllm_nodeagent.config import SysctlSetting
from vllm_nodeagent.host import Host
from vllm_nodeagent.host.parse import parse_bracket_list
from vllm_nodeagent.settings import engine
from vllm_nodeagent.settings.base import Tunable
from vllm_nodeagent.settings.block import BlockScheduler
from vllm_nodeagent.settings.journal import Journal
from vllm_nodeagent.settings.restore import revert
from vllm_nodeagent.settings.sysctl import Sysctl
from vllm_nodeagent.settings.thp import Thp

pytestmark = [pytest.mark.realhost, requires_root]
REAL = Host("/")
THP = "/sys/kernel/mm/transparent_hugepage"


def raw(path: str) -> str:
    return Path(path).read_text().rstrip("\n")


def put(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


@pytest.fixture
def restore() -> Iterator[Callable[[str, Callable[[str], str]], None]]:
    """restore(path, to_writable): remember path's value now; write it back at teardown."""
    saved: list[tuple[str, str]] = []

    def remember(path: str, to_writable: Callable[[str], str] = lambda v: v) -> None:
        saved.append((path, to_writable(raw(path))))

    yield remember
    for path, value in reversed(saved):
        put(path, value)


def bracket(v: str) -> str:
    current, _ = parse_bracket_list(v)
    assert current is not None
    return current


def scheduler_device() -> str:
    for dev in sorted(Path("/sys/block").iterdir()):
        sched = dev / "queue/scheduler"
        if sched.exists() and len(parse_bracket_list(sched.read_text())[1]) >= 2:
            return dev.name
    pytest.skip("no block device offers two schedulers")


def other_choice(path: str) -> str:
    current, offered = parse_bracket_list(raw(path))
    return next(o for o in offered if o != current)


def test_apply_drift_revert_on_real_kernel(tmp_path: Path, restore: Callable[..., None]) -> None:
    dev = scheduler_device()
    paths = {
        "mmc": "/proc/sys/vm/max_map_count",
        "rmem": "/proc/sys/net/core/rmem_max",
        "tcp": "/proc/sys/net/ipv4/tcp_rmem",
        "thp": f"{THP}/enabled",
        "defrag": f"{THP}/defrag",
        "sched": f"/sys/block/{dev}/queue/scheduler",
    }
    for key in ("mmc", "rmem", "tcp"):
        restore(paths[key])
    for key in ("thp", "defrag", "sched"):
        restore(paths[key], bracket)
    before = {k: raw(p) for k, p in paths.items()}
    mmc = int(before["mmc"])
    tcp = [int(x) for x in before["tcp"].split()]
    tunables: list[Tunable] = [
        Sysctl.from_setting(REAL, SysctlSetting("vm.max_map_count", str(mmc + 4096), "floor")),
        Sysctl.from_setting(REAL, SysctlSetting("net.core.rmem_max", str(int(before["rmem"]) + 1), "exact")),
        Sysctl.from_setting(REAL, SysctlSetting("net.ipv4.tcp_rmem", f"{tcp[0]} {tcp[1]} {tcp[2] + 4096}", "floor")),
        Thp(REAL, "enabled", other_choice(paths["thp"])),
        Thp(REAL, "defrag", other_choice(paths["defrag"])),
        BlockScheduler(REAL, dev, other_choice(paths["sched"])),
    ]
    journal = Journal(REAL, str(tmp_path / "state"))

    outcomes = engine.apply(tunables, journal)
    assert [o.status for o in outcomes] == [engine.CHANGED] * 6, outcomes
    assert int(raw(paths["mmc"])) == mmc + 4096
    assert raw(paths["tcp"]).split()[2] == str(tcp[2] + 4096)
    assert all(o.status == engine.OK for o in engine.verify(tunables))
    assert engine.drift(tunables, journal) == []

    # Someone changes THP and the scheduler behind the agent's back: drift sees exactly those two.
    put(paths["thp"], bracket(before["thp"]))
    put(paths["sched"], bracket(before["sched"]))
    assert sorted(o.id for o in engine.drift(tunables, journal)) == sorted(["thp.enabled", f"block.{dev}.scheduler"])
    reapplied = engine.apply(tunables, journal)
    assert sorted(o.id for o in reapplied if o.status == engine.CHANGED) == sorted(
        ["thp.enabled", f"block.{dev}.scheduler"]
    )
    assert engine.drift(tunables, journal) == []

    # Revert: every value exactly as the kernel printed it before, and the journal gone.
    reverted = revert(REAL, journal)
    assert {o.status for o in reverted} == {engine.RESTORED} and len(reverted) == 6
    assert {k: raw(p) for k, p in paths.items()} == before
    assert journal.entries() == {}


def test_kernel_refusals_change_nothing(tmp_path: Path, restore: Callable[..., None]) -> None:
    restore("/proc/sys/vm/max_map_count")
    before = raw("/proc/sys/vm/max_map_count")
    journal = Journal(REAL, str(tmp_path / "state"))
    words = Sysctl(REAL, "vm.max_map_count", "not-a-number", "exact")  # refused before any write
    einval = Sysctl(REAL, "vm.max_map_count", "-5", "exact")  # an integer below the kernel's minimum: EINVAL
    eacces = Sysctl(REAL, "kernel.osrelease", "9.9.9", "exact")  # a read-only sysctl: EACCES even for root
    ok = Sysctl(REAL, "vm.max_map_count", str(int(before) + 1), "floor")
    outcomes = engine.apply([words, einval, eacces, ok], journal)
    assert [o.status for o in outcomes] == [engine.NOT_CHANGED, engine.FAILED, engine.FAILED, engine.CHANGED]
    assert "takes integers" in outcomes[0].message
    assert "EINVAL" in outcomes[1].message and "EACCES" in outcomes[2].message
    assert "left as it was" in outcomes[1].message
    assert raw("/proc/sys/kernel/osrelease") != "9.9.9"
    revert(REAL, journal)
    assert raw("/proc/sys/vm/max_map_count") == before


def test_cli_apply_and_revert_real_kernel(tmp_path: Path, restore: Callable[..., None]) -> None:
    restore("/proc/sys/net/core/wmem_max")
    restore(f"{THP}/enabled", bracket)
    before = {p: raw(p) for p in ("/proc/sys/net/core/wmem_max", f"{THP}/enabled")}
    want_thp = other_choice(f"{THP}/enabled")
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'[agent]\nstate_dir = "{tmp_path}/state"\n[sysctl]\n"net.core.wmem_max" = '
        f'{int(before["/proc/sys/net/core/wmem_max"]) + 1}\n[thp]\nenabled = "{want_thp}"\n'
    )
    cfg.chmod(0o600)
    base = [sys.executable, "-m", "vllm_nodeagent.cli", "--config", str(cfg), "--log-format", "json"]
    res = subprocess.run([*base, "apply", "--json"], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    assert {r["status"] for r in json.loads(res.stdout)["results"]} == {"changed"}
    assert bracket(raw(f"{THP}/enabled")) == want_thp
    doc = subprocess.run([*base, "doctor", "--json"], capture_output=True, text=True, check=False)
    checks = {c["id"]: c["status"] for c in json.loads(doc.stdout)["checks"]}
    assert checks["thp.enabled"] == "pass" and checks["sysctl.net.core.wmem_max"] == "pass"
    res = subprocess.run([*base, "revert"], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    assert {p: raw(p) for p in before} == before
