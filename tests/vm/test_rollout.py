"""The rolling rollout of the Ansible role on the two guests (issue 25.5): site.yml runs a canary batch of one
host, then the rest, with max_fail_percentage 0 and doctor --json as each host's last step. A first run deploys
both; `--check --diff` shows each changed setting (the config diff and `apply --dry-run` on the host) and changes
nothing; a deliberately broken host in the second batch stops the play after it (nothing after it runs); a broken
canary leaves the second batch untouched.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from guest import STANDIN_REMOTE, host_state
from test_ansible import ANSIBLE_DIR, HOSTS, RECAP, ansible_playbook, role_vars, write_inventory
from vm import VM, timings

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def fleet(workdir: Path, ssh_key: Path, standin_path: Path) -> Iterator[dict[str, VM]]:
    ansible_playbook()  # skip before booting anything
    guests = {name: VM(f"roll-{name}", workdir, ssh_key) for name in HOSTS}
    try:
        t0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=len(guests)) as pool:
            list(pool.map(VM.start, guests.values()))
        timings["rollout_boot_2vms_s"] = time.monotonic() - t0
        for g in guests.values():
            g.ssh(["mkdir", "-p", "/opt/standin"])
            g.put(standin_path, STANDIN_REMOTE, mode="0755")
        yield guests
    finally:
        with ThreadPoolExecutor(max_workers=len(guests)) as pool:
            list(pool.map(VM.stop, guests.values()))


def run_playbook_raw(workdir: Path, inventory: Path, extra: Path, log_name: str, *flags: str) -> tuple[int, str]:
    env = dict(os.environ)
    env.update(
        {
            "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
            "ANSIBLE_HOST_KEY_CHECKING": "False",
            "ANSIBLE_FORKS": "2",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_LOCAL_TEMP": str(workdir / "ansible-tmp"),
        }
    )
    argv = [ansible_playbook(), "-i", str(inventory), "-e", f"@{extra}", *flags, str(ANSIBLE_DIR / "site.yml")]
    res = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=str(ANSIBLE_DIR), timeout=1800)
    out = res.stdout + res.stderr
    (workdir / log_name).write_text(out)
    return res.returncode, out


def recap(out: str) -> dict[str, tuple[int, int]]:
    """host -> (changed, failed + unreachable) from the PLAY RECAP."""
    return {m.group(1): (int(m.group(3)), int(m.group(5)) + int(m.group(4))) for m in RECAP.finditer(out)}


def broken_inventory(workdir: Path, fleet: dict[str, VM], key: Path, broken: str, name: str) -> Path:
    """The inventory with one host deliberately broken: an exact kernel.pid_max the kernel refuses (EINVAL above
    PID_MAX_LIMIT), so apply fails on it and doctor reports FAIL there."""
    d = workdir / name
    (d / "host_vars").mkdir(parents=True, exist_ok=True)
    write_inventory(d / "hosts.ini", fleet, key)
    sysctl = {
        "vm.max_map_count": 262144,
        "kernel.pid_max": {"value": 99999999, "mode": "exact"},
    }
    (d / "host_vars" / f"{broken}.json").write_text(json.dumps({"vllm_nodeagent_sysctl": sysctl}))
    return d / "hosts.ini"


def test_rolling_deploy_canary_then_the_rest(
    fleet: dict[str, VM], workdir: Path, ssh_key: Path, deb_path: Path
) -> None:
    inventory = workdir / "roll-inventory.ini"
    write_inventory(inventory, fleet, ssh_key)
    extra = workdir / "roll-vars.json"
    extra.write_text(json.dumps(role_vars(deb_path, workdir / "roll-report.txt")))
    t0 = time.monotonic()
    rc, out = run_playbook_raw(workdir, inventory, extra, "ansible-roll-deploy.log")
    timings["ansible_rolling_deploy_s"] = time.monotonic() - t0
    assert rc == 0, out[-6000:]
    r = recap(out)
    assert all(r[h][1] == 0 for h in HOSTS), out[-3000:]
    # two batches: node-a alone (the canary), then node-b
    plays = [m.start() for m in re.finditer(r"^PLAY \[Deploy vllm-nodeagent\]", out, re.M)]
    assert len(plays) == 2, out[-3000:]
    assert out.index("ok: [node-a]", plays[0]) < plays[1] and "[node-b]" not in out[plays[0] : plays[1]]


def agent_config(g: VM) -> str:
    return g.out(["cat", "/etc/vllm-nodeagent/config.toml"])


def test_check_diff_dry_run_shows_each_setting_and_changes_nothing(
    fleet: dict[str, VM], workdir: Path, ssh_key: Path, deb_path: Path
) -> None:
    inventory = workdir / "roll-inventory.ini"
    write_inventory(inventory, fleet, ssh_key)
    extra = workdir / "vars-dry.json"
    v = role_vars(deb_path, workdir / "fleet-report-dry.txt")
    v["vllm_nodeagent_sysctl"] = {"vm.max_map_count": 524288}
    extra.write_text(json.dumps(v))
    before = {name: (agent_config(g), host_state(g)["vm.max_map_count"]) for name, g in fleet.items()}
    t0 = time.monotonic()
    rc, out = run_playbook_raw(workdir, inventory, extra, "ansible-check.log", "--check", "--diff")
    timings["ansible_check_diff_s"] = time.monotonic() - t0
    assert rc == 0, out[-6000:]
    assert '+"vm.max_map_count" = 524288' in out, out[-6000:]  # the config diff, per key
    # what apply would do on that host (the callback may print the arrow as \u2192)
    assert re.search(r"sysctl\.vm\.max_map_count\s+262144 (→|\\u2192) 524288", out), out[-6000:]
    for name, g in fleet.items():
        assert (agent_config(g), host_state(g)["vm.max_map_count"]) == before[name]  # a dry run


def test_a_broken_second_batch_stops_the_play(
    fleet: dict[str, VM], workdir: Path, ssh_key: Path, deb_path: Path
) -> None:
    """node-a is the canary (batch 1), node-b batch 2 and broken: node-a gets the change, node-b fails its doctor,
    and the play stops there (the fleet report play after it never runs)."""
    inventory = broken_inventory(workdir, fleet, ssh_key, "node-b", "inv-broken-b")
    extra = workdir / "vars-b.json"
    v = role_vars(deb_path, workdir / "fleet-report-b.txt")
    v["vllm_nodeagent_agent"]["drift_interval_s"] = 11  # type: ignore[index]
    extra.write_text(json.dumps(v))
    t0 = time.monotonic()
    rc, out = run_playbook_raw(workdir, inventory, extra, "ansible-broken-b.log")
    timings["ansible_broken_second_batch_s"] = time.monotonic() - t0
    assert rc != 0, out[-6000:]
    r = recap(out)
    assert r["node-a"][1] == 0 and r["node-b"][1] >= 1, out[-4000:]
    assert "localhost" not in r, out[-4000:]  # the play stopped: nothing after it ran
    assert "vllm-nodeagent doctor reports failures on node-b" in out
    assert "drift_interval_s = 11" in agent_config(fleet["node-a"])
    assert not (workdir / "fleet-report-b.txt").exists()


def test_a_broken_canary_leaves_the_next_batch_untouched(
    fleet: dict[str, VM], workdir: Path, ssh_key: Path, deb_path: Path
) -> None:
    before_b = agent_config(fleet["node-b"])
    inventory = broken_inventory(workdir, fleet, ssh_key, "node-a", "inv-broken-a")
    extra = workdir / "vars-a.json"
    v = role_vars(deb_path, workdir / "fleet-report-a.txt")
    v["vllm_nodeagent_agent"]["drift_interval_s"] = 12  # type: ignore[index]
    extra.write_text(json.dumps(v))
    t0 = time.monotonic()
    rc, out = run_playbook_raw(workdir, inventory, extra, "ansible-broken-a.log")
    timings["ansible_broken_canary_s"] = time.monotonic() - t0
    assert rc != 0, out[-6000:]
    r = recap(out)
    assert r["node-a"][1] >= 1 and "node-b" not in r, out[-4000:]  # batch 2 never started
    assert agent_config(fleet["node-b"]) == before_b
    assert "drift_interval_s = 12" in agent_config(fleet["node-a"])
