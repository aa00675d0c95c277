"""The Ansible role (packaging/ansible, role vllm_nodeagent) rolled out to two guests over ssh.

Run 1 installs, configures and starts the agent on both; run 2 must change nothing; the fleet
report written on the controller lists both hosts.
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


def run_playbook(workdir: Path, inventory: Path, extra: Path, log_name: str) -> tuple[str, dict[str, int]]:
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
    _, changed1 = run_playbook(workdir, inventory, extra, "ansible-run1.log")
    timings["ansible_run1_s"] = time.monotonic() - t0
    assert all(changed1[h] > 0 for h in HOSTS), changed1

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
