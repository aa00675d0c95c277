"""End to end on a real kernel: the .deb in a Debian 12 guest with two NUMA nodes and real systemd.

One guest for the whole module; the tests run in file order and each builds on the one before
(install -> settings -> doctor -> drift -> reload -> watchdog -> reboot/stop/purge). A failure
early on makes the later ones fail too: read the first failure.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest
from guest import (
    DATA_DISK,
    HOLD_FILE,
    STANDIN_REMOTE,
    UNIT,
    diag,
    doctor_json,
    find_status,
    host_state,
    http_get,
    journal_cursor,
    journal_since,
    numa_policies,
    off_target,
    proc_status,
    selected,
    standin_pid,
    unit_props,
    wait_for,
)
from hwloc_peer import compare, parse_view
from vm import VM, booted, timings

pytestmark = pytest.mark.vm

DRIFT_INTERVAL_S = 5
WATCHDOG_SEC = 20
HEALTH_URL = "http://127.0.0.1:8000/health"
VLLM_NODE = 1
CONFIG_PATH = "/etc/vllm-nodeagent/config.toml"
# [irq] irqbalance = "stop": checked on its own (test_02b) so that it does not hide the other settings.
IRQBALANCE_STOPPED = {"irqbalance.active": "inactive", "irqbalance.enabled": "disabled"}

# How long the bounded waits may take under TCG on 2 cores (a wait ends as soon as its condition holds).
START_TIMEOUT = 240.0
SETTLE_TIMEOUT = 120.0


class Bed:
    """The guest and what the tests learn about it on the way."""

    def __init__(self, guest: VM) -> None:
        self.guest = guest
        self.baseline: dict[str, str] = {}
        self.desired: dict[str, str] = {}
        self.config = ""
        self.status_texts: list[str] = []


def _other(current: str, choices: list[str]) -> str:
    """The first of ``choices`` that differs from ``current``: a setting the agent must really change."""
    return next(c for c in choices if c != current)


def make_config(baseline: dict[str, str], sched_choices: list[str]) -> tuple[str, dict[str, str]]:
    thp_enabled = _other(baseline["thp.enabled"], ["madvise", "never"])
    thp_defrag = _other(baseline["thp.defrag"], ["defer+madvise", "never"])
    scheduler = _other(baseline["block.scheduler"], [s for s in ["mq-deadline", "none"] if s in sched_choices])
    desired = {
        "vm.max_map_count": "262144",
        "net.core.rmem_max": "134217728",
        "net.core.wmem_max": "134217728",
        "net.ipv4.tcp_rmem": "4096 87380 134217728",
        "net.ipv4.tcp_wmem": "4096 65536 134217728",
        "thp.enabled": thp_enabled,
        "thp.defrag": thp_defrag,
        "block.scheduler": scheduler,
    }
    config = f"""\
# written by tests/vm/test_agent_e2e.py
[agent]
state_dir = "/var/lib/vllm-nodeagent"
mode = "enforce"
drift_interval_s = {DRIFT_INTERVAL_S}
revert_on_stop = true
metrics_textfile = ""

[sysctl]
"vm.max_map_count" = 262144
"net.core.rmem_max" = 134217728
"net.core.wmem_max" = 134217728
"net.ipv4.tcp_rmem" = "4096 87380 134217728"
"net.ipv4.tcp_wmem" = "4096 65536 134217728"

[thp]
enabled = "{thp_enabled}"
defrag = "{thp_defrag}"

[block]
devices = ["{DATA_DISK}"]
scheduler = "{scheduler}"

[irq]
irqbalance = "stop"

[vllm]
command = ["/usr/bin/python3", "{STANDIN_REMOTE}", "--hold-file", "{HOLD_FILE}"]
model = ""
args = []
numa = "bind"
nodes = [{VLLM_NODE}]
user = "vllm"
health_url = "{HEALTH_URL}"
start_timeout_s = 600
"""
    return config, desired


def assert_tuned(bed: Bed) -> None:
    missing = off_target(host_state(bed.guest), bed.desired)
    assert missing == {}, f"{missing}{diag(bed.guest)}"


def assert_as_found(bed: Bed) -> None:
    changed = off_target(host_state(bed.guest), bed.baseline, floors=False)
    assert changed == {}, f"{changed}{diag(bed.guest)}"


def unit_is(guest: VM, state: str) -> Optional[dict[str, str]]:
    props = unit_props(guest, "ActiveState", "SubState", "StatusText", "MainPID", "NRestarts")
    return props if props.get("ActiveState") == state else None


@pytest.fixture(scope="module")
def bed(workdir: Path, ssh_key: Path) -> Iterator[Bed]:
    for guest in booted(workdir, ssh_key, "agent"):
        yield Bed(guest)


# ---------------------------------------------------------------------------------------------
def test_00_guest_has_two_numa_nodes(bed: Bed) -> None:
    g = bed.guest
    hw = g.out(["numactl", "--hardware"])
    assert "available: 2 nodes (0-1)" in hw
    assert g.out(["cat", f"/sys/devices/system/node/node{VLLM_NODE}/cpulist"]) == "1"
    assert g.out(["cat", "/proc/1/comm"]) == "systemd"


def test_01_install_and_start_reaches_active_only_after_ready(bed: Bed, deb_path: Path, standin_path: Path) -> None:
    g = bed.guest
    bed.baseline = host_state(g)
    assert bed.baseline["irqbalance.active"] == "active", "the image must start irqbalance for the stop test"
    sched_choices = g.out(["cat", f"/sys/block/{DATA_DISK}/queue/scheduler"]).replace("[", "").replace("]", "")
    bed.config, bed.desired = make_config(bed.baseline, sched_choices.split())

    # dpkg -i of the built package: its dependencies are in the image and the guest has no way out
    # (qemu user networking with restrict=on), so this also proves the install works offline.
    g.put(deb_path, "/root/vllm-nodeagent.deb")
    t0 = time.monotonic()
    g.out("DEBIAN_FRONTEND=noninteractive dpkg -i /root/vllm-nodeagent.deb", timeout=900)
    # apt agrees that nothing is missing (it would have to download otherwise, and cannot).
    g.out("apt-get check -q")
    timings["deb_install_s"] = time.monotonic() - t0
    assert g.out(["dpkg-query", "-W", "-f=${Status}", "vllm-nodeagent"]) == "install ok installed"
    assert g.out(["id", "-un", "vllm"]) == "vllm"
    assert "topology" in g.out(["vllm-nodeagent", "--help"])

    g.ssh(["mkdir", "-p", "/opt/standin"])
    g.put(standin_path, STANDIN_REMOTE, mode="0755")
    g.write(CONFIG_PATH, bed.config, mode="0640")
    # A shorter watchdog than the packaged 120 s, through a drop-in as an operator would.
    g.ssh(["mkdir", "-p", f"/etc/systemd/system/{UNIT}.service.d"])
    g.write(f"/etc/systemd/system/{UNIT}.service.d/vmbed.conf", f"[Service]\nWatchdogSec={WATCHDOG_SEC}s\n")
    g.ssh(["systemctl", "daemon-reload"])

    # Hold the stand-in in its loading phase: the unit must stay "activating" until vLLM is healthy.
    g.write(HOLD_FILE, "held by the test\n")
    t0 = time.monotonic()
    g.ssh(["systemctl", "enable", "--now", "--no-block", UNIT])
    pid = wait_for(
        "the stand-in vLLM to be started by the agent", lambda: standin_pid(g), START_TIMEOUT, explain=lambda: diag(g)
    )
    code = wait_for("the stand-in to answer /health (503 while held)", lambda: http_get(g, HEALTH_URL)[0] or None, 60)
    assert code == 503
    held = unit_props(g, "ActiveState", "StatusText")
    assert held["ActiveState"] == "activating", held
    assert held["StatusText"], "the agent shows its phase in STATUS= while starting"
    bed.status_texts.append(held["StatusText"])

    # The stand-in runs as "vllm", bound to node 1: CPU affinity and memory policy.
    status = proc_status(g, pid)
    node_cpus = g.out(["cat", f"/sys/devices/system/node/node{VLLM_NODE}/cpulist"])
    assert status["Cpus_allowed_list"] == node_cpus
    assert g.out(["ps", "-o", "user=", "-p", str(pid)]) == "vllm"
    policies = numa_policies(g, pid)
    # numactl --membind sets the memory policy (numa_maps "bind:1"); a cpuset narrows Mems_allowed.
    assert status["Mems_allowed_list"] == str(VLLM_NODE) or policies == {f"bind:{VLLM_NODE}"}, (status, policies)

    g.ssh(["rm", "-f", HOLD_FILE])
    props = wait_for(
        "the unit to become active after READY", lambda: unit_is(g, "active"), START_TIMEOUT, explain=lambda: diag(g)
    )
    timings["agent_start_s"] = time.monotonic() - t0
    bed.status_texts.append(props["StatusText"])
    assert http_get(g, HEALTH_URL)[0] == 200
    assert props["StatusText"], props
    assert g.out(["systemctl", "is-enabled", UNIT]) == "enabled"


def test_02_settings_applied_on_the_real_kernel(bed: Bed) -> None:
    g = bed.guest
    assert_tuned(bed)
    # The journal of originals holds what the host had before.
    journal = g.out(["cat", "/var/lib/vllm-nodeagent/originals.json"])
    assert "vm.max_map_count" in journal
    assert bed.baseline["vm.max_map_count"] in journal


def test_02b_irqbalance_stopped_and_disabled(bed: Bed) -> None:
    state = host_state(bed.guest)
    got = {k: state[k] for k in IRQBALANCE_STOPPED}
    assert got == IRQBALANCE_STOPPED, f"{got}{diag(bed.guest)}"


def test_03_doctor_reports_no_failure(bed: Bed) -> None:
    rc, report = doctor_json(bed.guest)
    fails = find_status(report, "fail")
    assert fails == [], fails
    assert rc == 0, report
    assert find_status(report, "pass"), "doctor checked something"


def test_03b_topology_agrees_with_lstopo(bed: Bed) -> None:
    """The installed agent and hwloc (hwloc-nox in the image) read the guest's two nodes the same way."""
    g = bed.guest
    before = json.loads(g.out(["vllm-nodeagent", "topology", "--json"]))
    view = parse_view(g.out("HWLOC_KEEP_NVIDIA_GPU_NUMA_NODES=1 lstopo-no-graphics --of xml"))
    after = json.loads(g.out(["vllm-nodeagent", "topology", "--json"]))
    assert sorted(view.nodes) == [0, 1]
    assert compare(before, view, agent_after=after) == []


def test_04_drift_is_restored_and_logged(bed: Bed) -> None:
    g = bed.guest
    path = "/sys/kernel/mm/transparent_hugepage/enabled"
    intruder = bed.baseline["thp.enabled"]
    assert intruder != bed.desired["thp.enabled"]
    cursor = journal_cursor(g)
    g.write(path, intruder + "\n")
    # No read-back here: the agent may already have put it back (that race is the feature under test);
    # the drift event below names the value it found.
    t0 = time.monotonic()
    wait_for(
        "the agent to restore THP",
        lambda: selected(g.out(["cat", path])) == bed.desired["thp.enabled"],
        DRIFT_INTERVAL_S * 12,
        interval=0.5,
        explain=lambda: diag(g),
    )
    timings["drift_restore_s"] = time.monotonic() - t0
    lines = wait_for(
        "a drift event in the journal",
        lambda: [ln for ln in journal_since(g, cursor).splitlines() if "drift" in ln.lower()] or None,
        30,
    )
    assert any("thp" in ln.lower() and intruder in ln for ln in lines), lines


def test_05_reload_with_a_broken_config_keeps_the_old_one(bed: Bed) -> None:
    g = bed.guest
    before = unit_props(g, "MainPID", "NRestarts", "ActiveState")
    assert before["ActiveState"] == "active"
    cursor = journal_cursor(g)
    g.write(CONFIG_PATH, "[agent\nthis is = not toml\n", mode="0640")
    refused = g.ssh(["systemctl", "reload", UNIT], check=False)
    # ExecReload=vllm-nodeagent reload waits for the daemon's verdict: a refused config fails the reload job
    assert refused.returncode != 0, (refused.stdout, refused.stderr)

    def complaint() -> Optional[list[str]]:
        lines = [
            ln
            for ln in journal_since(g, cursor).splitlines()
            if "config" in ln.lower() and any(w in ln.lower() for w in ("error", "invalid", "fail", "keep"))
        ]
        return lines or None

    wait_for("the agent to report the broken config", complaint, 60, explain=lambda: diag(g))
    after = unit_props(g, "MainPID", "NRestarts", "ActiveState")
    assert after == before
    assert_tuned(bed)
    assert http_get(g, HEALTH_URL)[0] == 200

    # Put the good config back; a reload with it keeps the service up too, and is over when systemctl returns
    # (with ExecReload=/bin/kill -HUP the unit was still "reloading" here: CI, systemd 252).
    g.write(CONFIG_PATH, bed.config, mode="0640")
    g.ssh(["systemctl", "reload", UNIT])
    assert unit_props(g, "MainPID", "ActiveState") == {"MainPID": before["MainPID"], "ActiveState": "active"}


def test_06_watchdog_restarts_a_hung_agent(bed: Bed) -> None:
    g = bed.guest
    before = unit_props(g, "MainPID", "NRestarts")
    cursor = journal_cursor(g)
    g.ssh(["kill", "-STOP", before["MainPID"]])
    t0 = time.monotonic()

    def restarted() -> Optional[dict[str, str]]:
        props = unit_is(g, "active")
        if props and props["MainPID"] != before["MainPID"] and int(props["NRestarts"]) > int(before["NRestarts"]):
            return props
        return None

    wait_for(
        "systemd to kill and restart the stopped agent",
        restarted,
        WATCHDOG_SEC * 3 + START_TIMEOUT,
        explain=lambda: diag(g),
    )
    timings["watchdog_restart_s"] = time.monotonic() - t0
    log = journal_since(g, cursor)
    assert "watchdog" in log.lower(), log[-3000:]
    wait_for(
        "the new agent's vLLM to be healthy",
        lambda: http_get(g, HEALTH_URL)[0] == 200,
        START_TIMEOUT,
        explain=lambda: diag(g),
    )
    assert_tuned(bed)


def test_07_reboot_reapplies_stop_reverts_purge_leaves_host_as_found(bed: Bed) -> None:
    g = bed.guest
    g.reboot()
    wait_for(
        "the service to come back after reboot", lambda: unit_is(g, "active"), START_TIMEOUT, explain=lambda: diag(g)
    )
    assert_tuned(bed)
    assert g.out(["journalctl", "-b", "-u", UNIT, "-o", "cat", "--no-pager"])
    assert http_get(g, HEALTH_URL)[0] == 200

    # revert_on_stop = true: stop puts the originals back.
    g.ssh(["systemctl", "stop", UNIT], timeout=300)
    assert g.ssh(["systemctl", "is-active", UNIT], check=False).stdout.strip() == "inactive"
    assert_as_found(bed)
    assert standin_pid(g) is None

    # Start again (tuned), then purge: the host must end as it was found before install.
    g.ssh(["systemctl", "start", UNIT], timeout=600)
    assert_tuned(bed)
    g.out("DEBIAN_FRONTEND=noninteractive apt-get purge -y vllm-nodeagent", timeout=600)
    assert_as_found(bed)
    assert standin_pid(g) is None
    res = g.ssh(["dpkg-query", "-W", "-f=${Status}", "vllm-nodeagent"], check=False)
    assert res.returncode != 0 or "not-installed" in res.stdout, res.stdout
    leftovers = g.out(
        "ls -d /etc/vllm-nodeagent /opt/vllm-nodeagent /var/lib/vllm-nodeagent "
        "/lib/systemd/system/vllm-nodeagent.service 2>/dev/null || true"
    )
    assert leftovers == "", leftovers
