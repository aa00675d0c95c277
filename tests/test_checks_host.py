"""Readiness checks 8, 9, 11, 13 (limits, /dev/shm, NUMA balancing, other owners) on fake trees."""

from __future__ import annotations

import pytest
from checkhelp import GIB, live_vllm, probe, results, user
from fakehost import FakeHost

from vllm_nodeagent.checks import limits, shm
from vllm_nodeagent.checks.kernel import accepts, parse_sysctl_conf

VLLM = "[vllm]\nmodel = 'm'\nuser = 'vllm'\n"
MIB = 1 << 20


# --- 9: /dev/shm -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("size", "free", "status"),
    [
        (64 * GIB, 60 * GIB, "pass"),
        (64 * MIB, 64 * MIB, "fail"),  # a container's default --shm-size
        (512 * MIB, 500 * MIB, "warn"),
        (4 * GIB, 100 * MIB, "warn"),  # big but full of leftovers
    ],
)
def test_shm_size(hgx: FakeHost, size: int, free: int, status: str) -> None:
    hgx.write("/dev/shm/.keep", "")
    r = results(probe(hgx, space=lambda p: (size, free) if p == "/dev/shm" else None), "shm")["shm.size"]
    assert r.status == status
    assert r.current == f"size {size // MIB} MiB, free {free // MIB} MiB"


def test_shm_missing_fails(hgx: FakeHost) -> None:
    r = results(probe(hgx), "shm")["shm.size"]
    assert (r.status, r.current) == ("fail", "no /dev/shm")


def test_remove_ipc_default_yes_warns_for_a_regular_user(hgx: FakeHost) -> None:
    user(hgx, uid=1001)
    r = results(probe(hgx, VLLM), "shm")["shm.remove_ipc"]
    assert r.status == "warn" and r.current == "RemoveIPC=yes (default), vllm uid 1001"
    assert "RemoveIPC=no" in r.hint


def test_remove_ipc_no_in_a_dropin_passes(hgx: FakeHost) -> None:
    user(hgx, uid=1001)
    hgx.write("/etc/systemd/logind.conf", "[Login]\n#RemoveIPC=yes\n")
    hgx.write("/etc/systemd/logind.conf.d/50-vllm.conf", "[Login]\nRemoveIPC=no\n")
    r = results(probe(hgx, VLLM), "shm")["shm.remove_ipc"]
    assert (r.status, r.current) == ("pass", "RemoveIPC=no, vllm uid 1001")


def test_remove_ipc_system_user_passes_and_login_defs_moves_the_line(hgx: FakeHost) -> None:
    user(hgx, uid=998)
    assert results(probe(hgx, VLLM), "shm")["shm.remove_ipc"].status == "pass"
    hgx.write("/etc/login.defs", "SYS_UID_MAX   499\n")
    assert results(probe(hgx, VLLM), "shm")["shm.remove_ipc"].status == "warn"


def test_remove_ipc_skips(hgx: FakeHost) -> None:
    assert results(probe(hgx), "shm")["shm.remove_ipc"].status == "skip"  # no [vllm]
    hgx.write("/etc/passwd", "root:x:0:0:root:/root:/bin/bash\n")  # the tree's own: the machine may have a vllm
    hgx.write("/etc/group", "root:x:0:\n")
    r = results(probe(hgx, VLLM), "shm")["shm.remove_ipc"]  # no such user
    assert r.status == "skip" and f"not in {hgx.root}/etc/passwd" in (r.current or "")


def test_logind_parser_ignores_other_sections_and_comments() -> None:
    assert shm.parse_logind_remove_ipc(["[Other]\nRemoveIPC=no\n", "# RemoveIPC=no\n"]) is None
    assert shm.parse_logind_remove_ipc(["[Login]\nRemoveIPC=no\n", "[Login]\nRemoveIPC=yes\n"]) is True


# --- 8: limits ---------------------------------------------------------------------------------------------
PROC_LIMITS = """Limit                     Soft Limit           Hard Limit           Units
Max cpu time              unlimited            unlimited            seconds
Max open files            {nofile_soft}                 {nofile_hard}              files
Max locked memory         {memlock}            {memlock}            bytes
"""


def test_proc_limits_parser() -> None:
    text = PROC_LIMITS.format(nofile_soft=1024, nofile_hard=524288, memlock=8388608)
    got = limits.parse_proc_limits(text)
    assert got["Max open files"] == (1024, 524288)
    assert got["Max locked memory"] == (8388608, 8388608)
    assert got["Max cpu time"] == (-1, -1)


def test_unit_limit_values() -> None:
    assert limits.parse_unit_limit("infinity") == (-1, -1)
    assert limits.parse_unit_limit("1024:524288") == (1024, 524288)
    assert limits.parse_unit_limit("64M") == (64 << 20, 64 << 20)
    assert limits.parse_unit_limit("lots") is None


def test_shipped_unit_passes(hgx: FakeHost) -> None:
    from pathlib import Path

    unit = (Path(__file__).resolve().parent.parent / "systemd/vllm-nodeagent.service").read_text()
    hgx.write("/usr/lib/systemd/system/vllm-nodeagent.service", unit)
    r = results(probe(hgx), "limits")["limits.unit"]
    assert (r.status, r.current) == ("pass", "nofile 1048576:1048576, memlock infinity:infinity")


def test_unit_dropin_lowering_memlock_warns(hgx: FakeHost) -> None:
    hgx.write(
        "/usr/lib/systemd/system/vllm-nodeagent.service", "[Service]\nLimitNOFILE=1048576\nLimitMEMLOCK=infinity\n"
    )
    hgx.write("/etc/systemd/system/vllm-nodeagent.service.d/override.conf", "[Service]\nLimitMEMLOCK=64M\n")
    r = results(probe(hgx), "limits")["limits.unit"]
    assert r.status == "warn" and "memlock 67108864:67108864" in (r.current or "")
    assert "LimitMEMLOCK=infinity" in r.hint


def test_unit_without_limits_is_systemds_default(hgx: FakeHost) -> None:
    hgx.write("/etc/systemd/system/vllm-nodeagent.service", "[Service]\nExecStart=/usr/bin/vllm-nodeagent run\n")
    r = results(probe(hgx), "limits")["limits.unit"]
    assert r.status == "warn" and r.current == "nofile 1024:524288, memlock 8388608:8388608"
    assert "open-file" not in r.detail  # the hard limit is enough: vLLM raises its own soft limit


def test_live_process_limits(hgx: FakeHost) -> None:
    live_vllm(hgx, limits=PROC_LIMITS.format(nofile_soft=1024, nofile_hard=4096, memlock="unlimited"))
    r = results(probe(hgx), "limits")["limits.vllm"]
    assert r.status == "warn" and r.current == "pid 4242: nofile 1024:4096, memlock infinity:infinity"
    assert "4096 < 65536" in r.detail
    live_vllm(hgx, limits=PROC_LIMITS.format(nofile_soft=65536, nofile_hard=1048576, memlock="unlimited"))
    assert results(probe(hgx), "limits")["limits.vllm"].status == "pass"


def test_limits_skip_without_unit_or_process(hgx: FakeHost) -> None:
    got = results(probe(hgx), "limits")
    assert got["limits.unit"].status == "skip" and got["limits.vllm"].status == "skip"
    hgx.write("/var/lib/vllm-nodeagent/vllm.pid", "999999")  # stale pid file: the process is gone
    assert results(probe(hgx), "limits")["limits.vllm"].status == "skip"


# --- 11: NUMA balancing ------------------------------------------------------------------------------------
def test_numa_balancing_on_two_nodes_warns(hgx: FakeHost) -> None:
    hgx.sysctl("kernel.numa_balancing", "1")
    r = results(probe(hgx), "kernel")["kernel.numa_balancing"]
    assert (r.status, r.current, r.desired) == ("warn", "1", "0")
    assert 'mode = "exact"' in r.hint


def test_numa_balancing_guards(hgx: FakeHost, tmp_path: object) -> None:
    assert results(probe(hgx), "kernel")["kernel.numa_balancing"].status == "skip"  # kernel without it
    hgx.sysctl("kernel.numa_balancing", "0")
    assert results(probe(hgx), "kernel")["kernel.numa_balancing"].status == "pass"
    hgx.sysctl("kernel.numa_balancing", "1")
    managed = "[sysctl]\n'kernel.numa_balancing' = { value = 0, mode = 'exact' }\n"
    assert results(probe(hgx, managed), "kernel")["kernel.numa_balancing"].status == "skip"


def test_numa_balancing_one_node_is_no_alarm(tmp_path: object) -> None:
    from pathlib import Path

    from fakehost import workstation

    h = workstation(Path(str(tmp_path)) / "ws")
    h.sysctl("kernel.numa_balancing", "1")
    assert results(probe(h), "kernel")["kernel.numa_balancing"].status == "pass"


# --- 13: other owners --------------------------------------------------------------------------------------
def test_sysctl_d_conflict_warns_and_agreement_passes(hgx: FakeHost) -> None:
    cfg = "[sysctl]\n'vm.max_map_count' = 262144\n'net.ipv4.tcp_rmem' = '4096 87380 134217728'\n"
    hgx.write("/usr/lib/sysctl.d/50-default.conf", "vm.max_map_count = 65530\n")
    hgx.write("/etc/sysctl.d/90-big.conf", "vm/max_map_count=1048576\n-net.ipv4.tcp_rmem = 4096 87380 134217728\n")
    r = results(probe(hgx, cfg), "kernel")["owners.sysctl_d"]
    assert r.status == "warn" and r.current == "/usr/lib/sysctl.d/50-default.conf: vm.max_map_count = 65530"
    # /etc masks the vendor file of the same name: the conflict is gone
    hgx.write("/etc/sysctl.d/50-default.conf", "# masked\n")
    r = results(probe(hgx, cfg), "kernel")["owners.sysctl_d"]
    assert r.status == "pass" and "90-big.conf: vm.max_map_count = 1048576" in (r.current or "")


def test_sysctl_d_parsing_and_floors() -> None:
    assert parse_sysctl_conf("; c\n# c\n-kernel/numa_balancing = 0\nbad line\n") == {"kernel.numa_balancing": "0"}
    assert accepts("262144", "floor", "8249672") and not accepts("262144", "exact", "8249672")
    assert not accepts("4096 87380 134217728", "floor", "4096 87380 6291456")


def test_tuned_running_warns_only_when_the_agent_manages_settings(hgx: FakeHost) -> None:
    assert results(probe(hgx, "[thp]\nenabled = 'madvise'\n"), "kernel")["owners.tuned"].status == "pass"
    hgx.write("/etc/tuned/active_profile", "throughput-performance")
    hgx.write("/proc/812/comm", "tuned")
    r = results(probe(hgx, "[thp]\nenabled = 'madvise'\n"), "kernel")["owners.tuned"]
    assert r.status == "warn" and r.current == "tuned pid 812, profile throughput-performance"
    assert results(probe(hgx, VLLM), "kernel")["owners.tuned"].status == "pass"


def test_power_profiles_daemon_owns_the_governor(hgx: FakeHost) -> None:
    cfg = "[cpu]\ngovernor = 'performance'\n"
    assert results(probe(hgx, cfg), "kernel")["owners.power_profiles"].status == "pass"
    hgx.write("/proc/901/comm", "power-profiles-")  # the kernel truncates comm to 15 characters
    r = results(probe(hgx, cfg), "kernel")["owners.power_profiles"]
    assert r.status == "warn" and "disable --now power-profiles-daemon" in r.hint
    assert results(probe(hgx), "kernel")["owners.power_profiles"].status == "skip"
