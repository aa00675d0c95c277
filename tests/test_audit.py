"""``[agent] mode = "audit"`` is read-only from the daemon's first tick: start, reload and stop write no setting and
no journal, and STATUS= and the metrics say so (issue 26.1). On a fake root and, under the realhost marker, on the
real kernel inside a fresh network namespace (its net.* sysctls are private to it: nothing of the host changes)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import test_daemon
from conftest import requires_root
from test_daemon import REPO, WAIT_S, Bed, NotifySocket, wait_until

bed = test_daemon.bed  # the fixture: a fake root, a config and the daemon

KNOB = "proc/sys/vm/max_map_count"


def snapshot(root: Path) -> dict[str, str]:
    """Every kernel file of the fake root and its content: what a read-only agent must leave as it found it."""
    out = {}
    for top in ("proc/sys", "sys"):
        for p in sorted((root / top).rglob("*")):
            if p.is_file():
                out[str(p.relative_to(root))] = p.read_text()
    return out


def test_audit_start_reload_and_stop_write_nothing(bed: Bed) -> None:
    bed.write_config(agent='mode = "audit"\nrevert_on_stop = true', extra='[sysctl]\n"vm.max_map_count" = 262144\n')
    before = snapshot(bed.root)
    bed.start()
    ready = bed.notify.wait_for("READY=1")
    assert (bed.root / KNOB).read_text().strip() == "65530"  # today's start wrote 262144
    assert any("audit: read-only" in line for line in bed.notify.lines()[: ready + 2])
    text = wait_until(lambda: bed.metrics.exists() and bed.metrics.read_text(), "metrics")
    assert 'vllm_nodeagent_agent_mode{mode="audit"} 1.0' in text
    assert 'vllm_nodeagent_agent_mode{mode="enforce"} 0.0' in text
    assert 'vllm_nodeagent_setting_compliant{id="sysctl.vm.max_map_count"} 0.0' in text
    assert next(e for e in bed.events() if e.get("event") == "not_compliant")["current"] == "65530"
    bed.signal(signal.SIGHUP)  # a reload re-reads the config: in audit it verifies again, never applies
    bed.notify.wait_for("READY=1", after=ready + 1)
    bed.signal(signal.SIGTERM)
    assert bed.wait_exit() == 0
    assert snapshot(bed.root) == before
    assert not (bed.root / "var/lib/vllm-nodeagent/originals.json").exists()
    assert [e for e in bed.events() if e.get("event") == "revert_skipped"]


def test_audit_counts_a_setting_that_stays_off_once(bed: Bed) -> None:
    """Compliant at start, then changed: one drift, not one per drift tick (audit never fixes it)."""
    (bed.root / KNOB).write_text("300000\n")
    bed.write_config(agent='mode = "audit"', extra='[sysctl]\n"vm.max_map_count" = 262144\n')
    bed.start()
    bed.notify.wait_for("READY=1")
    (bed.root / KNOB).write_text("100\n")
    bed.notify.wait_for("STATUS=watching; 1 drift; audit: read-only")
    seen: set[str] = set()

    def heartbeats() -> bool:
        text = bed.metrics.read_text() if bed.metrics.exists() else ""
        seen.update(ln for ln in text.splitlines() if ln.startswith("vllm_nodeagent_last_check_timestamp_seconds "))
        return len(seen) >= 4

    wait_until(heartbeats, "three more drift checks")
    assert len([e for e in bed.events() if e.get("event") == "drift"]) == 1
    assert (bed.root / KNOB).read_text().strip() == "100"


# -- the real kernel -----------------------------------------------------------------------------------------------
SOMAXCONN = "/proc/sys/net/core/somaxconn"  # per network namespace since Linux 4.x


@pytest.fixture
def netns() -> Iterator[str]:
    if not shutil.which("ip"):
        pytest.skip("iproute2 (ip) not installed")
    name = f"vna-audit-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def in_ns(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


@pytest.mark.realhost
@requires_root
def test_audit_on_the_real_kernel_writes_nothing(netns: str, tmp_path: Path) -> None:
    tmp_path.chmod(0o700)

    def read() -> str:
        return subprocess.run(in_ns(netns, "cat", SOMAXCONN), capture_output=True, text=True).stdout.strip()

    start = int(read())
    floor = start * 2
    state = tmp_path / "state"
    config = tmp_path / "config.toml"
    metrics = tmp_path / "metrics.prom"

    def write_config(mode: str) -> None:
        config.write_text(
            f'[agent]\nmode = "{mode}"\nstate_dir = "{state}"\ndrift_interval_s = 1\n'
            f'metrics_textfile = "{metrics}"\n[sysctl]\n"net.core.somaxconn" = {floor}\n'
        )
        config.chmod(0o600)

    write_config("audit")
    sock = NotifySocket(str(tmp_path))
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    env.update({"NOTIFY_SOCKET": sock.path, "PYTHONPATH": str(REPO)})
    base = [sys.executable, "-m", "vllm_nodeagent.cli", "--root", "/", "--config", str(config)]
    log = open(tmp_path / "daemon.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        in_ns(netns, *base, "--log-format", "json", "run", "--layout", "single"),
        env=env, stdout=subprocess.DEVNULL, stderr=log, cwd=str(REPO),
    )  # fmt: skip
    try:
        sock.wait_for("READY=1")
        assert read() == str(start)
        wait_until(lambda: metrics.exists() and 'agent_mode{mode="audit"} 1.0' in metrics.read_text(), "metrics")
        assert any("audit: read-only" in line for line in sock.lines())
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=WAIT_S)
        log.close()
        sock.close()
    assert read() == str(start)
    assert not (state / "originals.json").exists()
    # The control: the same config in enforce does write in this namespace, so the reads above could have failed.
    write_config("enforce")
    subprocess.run(in_ns(netns, *base, "apply"), env=env, check=True, capture_output=True)
    assert read() == str(floor)
