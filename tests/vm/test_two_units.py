"""The two-unit layout on a real kernel with real systemd: vllm-nodeagent.service (root, host work) and
vllm-nodeagent-serve.service (user vllm, vLLM), from the package's upgrade migration on.

One guest; the tests run in file order, each building on the one before:
single-unit install -> package upgrade migrates to two units -> host restart and package upgrade leave vLLM
alone -> stop leaves no vLLM -> start returns only after READY -> a health failure restarts only the serve
unit -> the binding in numa_maps is the plan's. A failure early on makes the later ones fail too.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest
from guest import HOLD_FILE, STANDIN_REMOTE, http_get, numa_policies, proc_status, standin_pid, wait_for
from hwloc_peer import cpulist_ints
from vm import VM, booted, timings

pytestmark = pytest.mark.vm

HOST = "vllm-nodeagent.service"
SERVE = "vllm-nodeagent-serve.service"
HEALTH_URL = "http://127.0.0.1:8000/health"
CONFIG_PATH = "/etc/vllm-nodeagent/config.toml"
VLLM_NODE = 1
START_TIMEOUT = 240.0
RESTART_SEC = 15  # the serve unit's RestartSec=

CONFIG = f"""\
# written by tests/vm/test_two_units.py
[agent]
state_dir = "/var/lib/vllm-nodeagent"
drift_interval_s = 5
metrics_textfile = ""

[sysctl]
"vm.max_map_count" = 262144

[vllm]
command = ["/usr/bin/python3", "{STANDIN_REMOTE}", "--load-seconds", "1", "--hold-file", "{HOLD_FILE}"]
model = ""
args = []
numa = "bind"
nodes = [{VLLM_NODE}]
user = "vllm"
health_url = "{HEALTH_URL}"
start_timeout_s = 600
stop_timeout_s = 20
health_interval_s = 1
unhealthy_after = 2
"""


class Bed:
    def __init__(self, guest: VM) -> None:
        self.guest = guest
        self.standin = 0  # the stand-in's PID once it runs in the serve unit


def props(guest: VM, unit: str, *names: str) -> dict[str, str]:
    text = guest.out(["systemctl", "show", unit, *(f"--property={n}" for n in names)])
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def unit_of(guest: VM, pid: int) -> str:
    """The unit whose cgroup holds ``pid`` (from /proc/PID/cgroup)."""
    text = guest.out(["cat", f"/proc/{pid}/cgroup"])
    return text.rsplit("/", 1)[-1].strip()


def diag(guest: VM) -> str:
    return "\n--- guest ---\n" + guest.out(
        f"systemctl status --no-pager -l {HOST} {SERVE} | head -n 40; echo ---; "
        f"journalctl -u {HOST} -u {SERVE} -o cat --no-pager -n 80",
    )


def active(guest: VM, unit: str) -> Optional[dict[str, str]]:
    p = props(guest, unit, "ActiveState", "MainPID", "NRestarts", "StatusText")
    return p if p.get("ActiveState") == "active" else None


def install(guest: VM, deb: str) -> None:
    guest.out(f"DEBIAN_FRONTEND=noninteractive dpkg -i {deb}", timeout=900)


@pytest.fixture(scope="module")
def bed(workdir: Path, ssh_key: Path) -> Iterator[Bed]:
    for guest in booted(workdir, ssh_key, "units"):
        yield Bed(guest)


# ---------------------------------------------------------------------------------------------
def test_10_single_unit_install_serves_from_the_host_unit(bed: Bed, deb_path: Path, standin_path: Path) -> None:
    """What an install from before the split looks like: only vllm-nodeagent.service enabled."""
    g = bed.guest
    g.put(deb_path, "/root/vllm-nodeagent.deb")
    install(g, "/root/vllm-nodeagent.deb")
    g.ssh(["mkdir", "-p", "/opt/standin"])
    g.put(standin_path, STANDIN_REMOTE, mode="0755")
    g.write(CONFIG_PATH, CONFIG, mode="0640")
    assert g.out(["stat", "-c", "%U %G %a", CONFIG_PATH]) == "root vllm 640"
    g.ssh(["systemctl", "enable", "--now", HOST], timeout=600)
    assert g.ssh(["systemctl", "is-enabled", SERVE], check=False).stdout.strip() == "disabled"
    pid = wait_for("the stand-in under the host unit", lambda: standin_pid(g), START_TIMEOUT, explain=lambda: diag(g))
    assert unit_of(g, pid) == HOST


def test_11_package_upgrade_migrates_to_the_serve_unit(bed: Bed) -> None:
    g = bed.guest
    t0 = time.monotonic()
    install(g, "/root/vllm-nodeagent.deb")  # a reinstall is an upgrade to the scripts ("configure <old>")
    assert g.out(["systemctl", "is-enabled", SERVE]) == "enabled"
    served = wait_for(
        "the serve unit to become active", lambda: active(g, SERVE), START_TIMEOUT, explain=lambda: diag(g)
    )
    timings["migration_to_serve_active_s"] = time.monotonic() - t0
    pid = wait_for("the stand-in", lambda: standin_pid(g), 60)
    assert unit_of(g, pid) == SERVE
    assert g.out(["ps", "-o", "user=", "-p", str(pid)]) == "vllm"
    assert g.out(["ps", "-o", "user=", "-p", served["MainPID"]]) == "vllm"
    assert active(g, HOST) is not None
    assert http_get(g, HEALTH_URL)[0] == 200
    assert g.out(["sysctl", "-n", "vm.max_map_count"]) == "262144"  # the host agent still tunes
    rc = g.ssh(["vllm-nodeagent", "doctor", "--json"], check=False).stdout
    assert '"agent.layout"' in rc and '"split"' in rc, rc[-2000:]
    bed.standin = pid


def test_12_restarting_and_upgrading_the_host_agent_leaves_vllm_alone(bed: Bed) -> None:
    g = bed.guest
    serve_before = props(g, SERVE, "MainPID", "NRestarts")
    host_before = props(g, HOST, "MainPID")
    g.ssh(["systemctl", "restart", HOST], timeout=600)
    assert props(g, HOST, "MainPID") != host_before
    assert standin_pid(g) == bed.standin
    assert props(g, SERVE, "MainPID", "NRestarts") == serve_before
    install(g, "/root/vllm-nodeagent.deb")  # postinstall try-restarts the host agent only
    wait_for("the host agent after the upgrade", lambda: active(g, HOST), START_TIMEOUT, explain=lambda: diag(g))
    assert standin_pid(g) == bed.standin
    assert props(g, SERVE, "MainPID", "NRestarts") == serve_before
    assert http_get(g, HEALTH_URL)[0] == 200


def test_13_stop_leaves_no_vllm_process(bed: Bed) -> None:
    g = bed.guest
    g.ssh(["systemctl", "stop", SERVE], timeout=300)
    assert g.ssh(["systemctl", "is-active", SERVE], check=False).stdout.strip() == "inactive"
    assert standin_pid(g) is None
    assert g.ssh(["pgrep", "-u", "vllm"], check=False).stdout.strip() == ""
    assert active(g, HOST) is not None


def test_14_start_returns_only_after_ready(bed: Bed) -> None:
    g = bed.guest
    g.write(HOLD_FILE, "held by the test\n")
    # `systemctl start` in the background; right after it returns, the shell records /health's status.
    probe = f"python3 -c 'import urllib.request; print(urllib.request.urlopen(\"{HEALTH_URL}\").status)'"
    g.write("/root/start.sh", f"#!/bin/sh\nsystemctl start {SERVE}\necho rc=$?\n{probe}\n", mode="0755")
    g.ssh("rm -f /root/start.out; nohup /root/start.sh > /root/start.out 2>&1 < /dev/null &")
    wait_for("the stand-in to start (held)", lambda: standin_pid(g), START_TIMEOUT, explain=lambda: diag(g))
    wait_for("the stand-in to answer 503", lambda: http_get(g, HEALTH_URL)[0] == 503, 60)
    assert props(g, SERVE, "ActiveState")["ActiveState"] == "activating"
    assert g.out("cat /root/start.out") == ""  # systemctl start is still waiting for READY
    g.ssh(["rm", "-f", HOLD_FILE])

    def returned() -> Optional[str]:
        text = g.out("cat /root/start.out")
        return text if len(text.splitlines()) >= 2 else None

    out = wait_for("systemctl start to return", returned, START_TIMEOUT, interval=1.0, explain=lambda: diag(g))
    assert out.splitlines() == ["rc=0", "200"], out
    assert active(g, SERVE) is not None
    bed.standin = standin_pid(g) or 0


def test_15_a_health_failure_restarts_only_the_serve_unit(bed: Bed) -> None:
    g = bed.guest
    serve_before = props(g, SERVE, "MainPID", "NRestarts")
    host_before = props(g, HOST, "MainPID", "NRestarts")
    old = bed.standin
    g.write(HOLD_FILE, "unhealthy now\n")  # alive, but /health answers 503
    t0 = time.monotonic()

    def restarted() -> Optional[dict[str, str]]:
        p = props(g, SERVE, "MainPID", "NRestarts", "ActiveState")
        return p if int(p["NRestarts"]) > int(serve_before["NRestarts"]) else None

    wait_for("systemd to restart the serve unit", restarted, 120 + RESTART_SEC, explain=lambda: diag(g))
    g.ssh(["rm", "-f", HOLD_FILE])
    now = wait_for("the serve unit active again", lambda: active(g, SERVE), START_TIMEOUT, explain=lambda: diag(g))
    timings["health_failure_to_serving_s"] = time.monotonic() - t0
    assert now["MainPID"] != serve_before["MainPID"]
    new = standin_pid(g)
    assert new is not None and new != old
    assert props(g, HOST, "MainPID", "NRestarts") == host_before
    log = g.out(["journalctl", "-u", SERVE, "-o", "cat", "--no-pager", "-n", "200"])
    assert "vllm_unhealthy" in log, log[-3000:]
    bed.standin = new


def test_16_binding_in_numa_maps_is_the_plans(bed: Bed) -> None:
    g = bed.guest
    pid = bed.standin
    node_cpus = g.out(["cat", f"/sys/devices/system/node/node{VLLM_NODE}/cpulist"])
    assert proc_status(g, pid)["Cpus_allowed_list"] == node_cpus
    assert numa_policies(g, pid) == {f"bind:{VLLM_NODE}"}
    plan = json.loads(g.out(["vllm-nodeagent", "launch", "--dry-run", "--json"]))
    assert plan["numa_nodes"] == [VLLM_NODE] and plan["binding"] == "numactl", plan
    assert cpulist_ints(plan["cpus"]) == cpulist_ints(node_cpus), plan  # the JSON contract's cpulist string
    # the sandbox systemd gave it: no capabilities at all, no new privileges
    status = proc_status(g, pid)
    assert status["CapEff"] == "0000000000000000" and status["CapBnd"] == "0000000000000000", status
    assert status["NoNewPrivs"] == "1"


def test_17_purge_stops_both_units(bed: Bed) -> None:
    g = bed.guest
    g.out("DEBIAN_FRONTEND=noninteractive apt-get purge -y vllm-nodeagent", timeout=600)
    assert standin_pid(g) is None
    for unit in (HOST, SERVE):
        assert g.ssh(["systemctl", "is-active", unit], check=False).stdout.strip() in ("inactive", "unknown")
