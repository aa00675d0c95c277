"""The Ansible role (packaging/ansible, role vllm_nodeagent) rolled out to two guests over ssh.

Run 1 installs, configures and starts the agent on both, in two batches (site.yml: a canary of one host, then the
rest); run 2 must change nothing; the fleet report written on the controller lists both hosts. Then the rolling
rollout (issue 25.5) on the same guests: `--check --diff` shows each changed setting (the config diff and
`apply --dry-run` on the host) and changes nothing; a deliberately broken host in the second batch stops the play
(nothing after it runs); a broken canary leaves the second batch untouched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from guest import HOLD_FILE, STANDIN_REMOTE, UNIT, host_state, http_get, proc_status, standin_pid
from vm import VM, timings

pytestmark = pytest.mark.vm

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "packaging" / "ansible"
HOSTS = ("node-a", "node-b")
RECAP = re.compile(r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def ansible_playbook() -> str:
    beside = Path(sys.executable).parent / "ansible-playbook"  # the venv pytest runs from
    found = (
        os.environ.get("ANSIBLE_PLAYBOOK")
        or (str(beside) if beside.is_file() else None)
        or shutil.which("ansible-playbook")
    )
    if not found:
        pytest.skip("ansible-playbook not installed (.ci/vm.sh installs a pinned ansible-core in .venv-vm)")
    return found


@pytest.fixture(scope="module")
def fleet(workdir: Path, ssh_key: Path, standin_path: Path) -> Iterator[dict[str, VM]]:
    if not (ANSIBLE_DIR / "site.yml").is_file():
        pytest.skip("packaging/ansible/site.yml not there yet")
    ansible_playbook()  # skip before booting anything
    guests = {name: VM(name, workdir, ssh_key) for name in HOSTS}
    try:
        # Both boot at once: the two qemu processes share the machine's cores.
        t0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=len(guests)) as pool:
            list(pool.map(VM.start, guests.values()))
        timings["fleet_boot_2vms_s"] = time.monotonic() - t0
        for g in guests.values():
            # vLLM itself is not the role's job: the stand-in is put in place beforehand.
            g.ssh(["mkdir", "-p", "/opt/standin"])
            g.put(standin_path, STANDIN_REMOTE, mode="0755")
        yield guests
    finally:
        with ThreadPoolExecutor(max_workers=len(guests)) as pool:
            list(pool.map(VM.stop, guests.values()))


def write_inventory(path: Path, guests: dict[str, VM], key: Path) -> None:
    lines = ["[vllm_nodes]"]
    lines += [f"{name} ansible_host=127.0.0.1 ansible_port={g.port}" for name, g in guests.items()]
    lines += [
        "",
        "[vllm_nodes:vars]",
        "ansible_user=root",
        f"ansible_ssh_private_key_file={key}",
        "ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'",
        "ansible_python_interpreter=/usr/bin/python3",
        "",
    ]
    path.write_text("\n".join(lines))


def role_vars(deb: Path, report: Path) -> dict[str, object]:
    return {
        "vllm_nodeagent_package_path": str(deb),
        "vllm_nodeagent_fleet_report_path": str(report),
        "vllm_nodeagent_agent": {
            "state_dir": "/var/lib/vllm-nodeagent",
            "mode": "enforce",
            "drift_interval_s": 10,
            "revert_on_stop": True,
            "metrics_textfile": "",
        },
        "vllm_nodeagent_thp": {"enabled": "madvise", "defrag": "defer+madvise"},
        "vllm_nodeagent_block": {"devices": ["vdb"], "scheduler": "mq-deadline"},
        "vllm_nodeagent_cpu": {},
        "vllm_nodeagent_gpu": {},
        "vllm_nodeagent_prewarm": {},
        # irqbalance = "stop" is proven by test_agent_e2e; here the role's own default.
        "vllm_nodeagent_irq": {"irqbalance": "keep"},
        "vllm_nodeagent_vllm": {
            "command": ["/usr/bin/python3", STANDIN_REMOTE, "--load-seconds", "1", "--hold-file", HOLD_FILE],
            "model": "",
            "args": [],
            "numa": "bind",
            "nodes": [1],
            "user": "vllm",
            "health_url": "http://127.0.0.1:8000/health",
            "start_timeout_s": 600,
        },
        "vllm_nodeagent_vllm_env": {},
    }


def playbook_env(workdir: Path) -> dict[str, str]:
    """The shipped ansible.cfg (pipelining on), plus what the bed's throw-away guests need. ssh: no compression
    (loopback) and the control master kept 5 min, so the next ansible-playbook run reuses it instead of paying
    another key exchange per host (~2 s under TCG)."""
    env = dict(os.environ)
    env.update(
        {
            "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
            "ANSIBLE_HOST_KEY_CHECKING": "False",
            "ANSIBLE_FORKS": "2",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_LOCAL_TEMP": str(workdir / "ansible-tmp"),
            "ANSIBLE_SSH_ARGS": "-o ControlMaster=auto -o ControlPersist=300s",
        }
    )
    return env


def run_playbook(workdir: Path, inventory: Path, extra: Path, log_name: str) -> tuple[str, dict[str, int]]:
    env = playbook_env(workdir)
    res = subprocess.run(
        [ansible_playbook(), "-i", str(inventory), "-e", f"@{extra}", str(ANSIBLE_DIR / "site.yml")],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(ANSIBLE_DIR),
        timeout=1800,
    )
    out = res.stdout + res.stderr
    (workdir / log_name).write_text(out)
    assert res.returncode == 0, out[-6000:]
    changed = {m.group(1): int(m.group(3)) for m in RECAP.finditer(out)}
    failed = {m.group(1): int(m.group(5)) + int(m.group(4)) for m in RECAP.finditer(out)}
    assert set(HOSTS) <= set(changed), out[-3000:]
    assert all(v == 0 for v in failed.values()), out[-3000:]
    return out, changed


def test_role_rolls_out_to_two_hosts_idempotently(
    fleet: dict[str, VM], workdir: Path, ssh_key: Path, deb_path: Path
) -> None:
    ansible_playbook()
    inventory = workdir / "inventory.ini"
    extra = workdir / "vars.json"
    report = workdir / "fleet-report.txt"
    write_inventory(inventory, fleet, ssh_key)
    extra.write_text(json.dumps(role_vars(deb_path, report)))
    before = {name: host_state(g) for name, g in fleet.items()}

    t0 = time.monotonic()
    out1, changed1 = run_playbook(workdir, inventory, extra, "ansible-run1.log")
    timings["ansible_run1_s"] = time.monotonic() - t0
    assert all(changed1[h] > 0 for h in HOSTS), changed1
    # two batches: node-a alone (the canary), then node-b
    plays = [m.start() for m in re.finditer(r"^PLAY \[Deploy vllm-nodeagent\]", out1, re.M)]
    assert len(plays) == 2, out1[-3000:]
    assert "[node-b]" not in out1[plays[0] : plays[1]] and "[node-a]" in out1[plays[0] : plays[1]]

    for name, g in fleet.items():
        assert g.out(["systemctl", "is-active", UNIT]) == "active"
        state = host_state(g)
        assert state["thp.enabled"] == "madvise" and state["block.scheduler"] == "mq-deadline", state
        assert state["vm.max_map_count"] == "262144", state
        assert before[name]["vm.max_map_count"] != "262144"
        assert http_get(g, "http://127.0.0.1:8000/health")[0] == 200
        pid = standin_pid(g)
        assert pid is not None
        assert proc_status(g, pid)["Cpus_allowed_list"] == "1"

    report_text = report.read_text()
    for h in HOSTS:
        assert re.search(rf"^{h}\s+ok\b", report_text, re.M), report_text

    t0 = time.monotonic()
    _, changed2 = run_playbook(workdir, inventory, extra, "ansible-run2.log")
    timings["ansible_run2_s"] = time.monotonic() - t0
    assert changed2 == dict.fromkeys([*HOSTS, "localhost"], 0), changed2


# -- the rolling rollout (issue 25.5), on the fleet deployed above ------------------------------------------------
def run_playbook_raw(workdir: Path, inventory: Path, extra: Path, log_name: str, *flags: str) -> tuple[int, str]:
    env = playbook_env(workdir)
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


def agent_config(g: VM) -> str:
    return g.out(["cat", "/etc/vllm-nodeagent/config.toml"])


def test_check_diff_dry_run_shows_each_setting_and_changes_nothing(
    fleet: dict[str, VM], workdir: Path, ssh_key: Path, deb_path: Path
) -> None:
    inventory = workdir / "inventory.ini"
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
