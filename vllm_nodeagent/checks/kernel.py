"""Checks 11 and 13: automatic NUMA balancing, and other owners of the settings the agent manages.

NUMA balancing migrates pages of a process bound with numactl toward where it last faulted; with the engine's
CPUs and memory already bound it costs page faults and buys nothing (advice, not a failure). Two owners of one
setting make drift flap: tuned re-applies its profile, `systemd-sysctl` re-applies sysctl.d at boot, and
power-profiles-daemon rewrites the CPU governor.
"""

from __future__ import annotations

import os
from typing import Optional

from vllm_nodeagent.checks.base import CheckResult, Probe, Registered
from vllm_nodeagent.checks.status import Status

NUMA_BALANCING = "/proc/sys/kernel/numa_balancing"
# systemd-sysctl's directories, lowest precedence last; a file name in an earlier directory masks a later one.
SYSCTL_DIRS = ("/etc/sysctl.d", "/run/sysctl.d", "/usr/local/lib/sysctl.d", "/usr/lib/sysctl.d", "/lib/sysctl.d")


def numa_balancing_check(probe: Probe) -> CheckResult:
    cid = "kernel.numa_balancing"
    value = probe.host.read_or(NUMA_BALANCING)
    if value is None:
        return CheckResult(cid, Status.SKIP, None, "0", "", "this kernel has no automatic NUMA balancing")
    managed = [s for s in probe.config.sysctl or () if s.name == "kernel.numa_balancing"]
    if managed:
        return CheckResult(
            cid, Status.SKIP, value.strip(), managed[0].value, "", "managed: see sysctl.kernel.numa_balancing"
        )
    if value.strip() == "0":
        return CheckResult(cid, Status.PASS, "0", "0")
    nodes = len(probe.topo.numa_nodes)
    if nodes <= 1:
        return CheckResult(cid, Status.PASS, value.strip(), "0", "", "one NUMA node: balancing has nothing to move")
    return CheckResult(
        cid,
        Status.WARN,
        value.strip(),
        "0",
        "add to [sysctl]: 'kernel.numa_balancing' = { value = 0, mode = \"exact\" }",
        f"{nodes} NUMA nodes: balancing migrates the bound engine's pages (page faults, no gain)",
    )


def parse_sysctl_conf(text: str) -> dict[str, str]:
    """key -> value of a sysctl.d file; keys normalised to dots, a leading '-' (ignore errors) dropped."""
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        key, sep, val = line.partition("=")
        if not sep:
            continue
        k = key.strip().lstrip("-").replace("/", ".")
        out[k] = " ".join(val.split())
    return out


def sysctl_files(probe: Probe) -> list[str]:
    """sysctl.d files in the order systemd-sysctl applies them (by name; /etc masks /usr/lib), then sysctl.conf."""
    by_name: dict[str, str] = {}
    for d in reversed(SYSCTL_DIRS):
        for p in probe.host.glob(d, "*.conf"):
            by_name[os.path.basename(p)] = p
    files = [by_name[n] for n in sorted(by_name)]
    if probe.host.exists("/etc/sysctl.conf"):
        files.append("/etc/sysctl.conf")
    return files


def accepts(configured: str, mode: str, value: str) -> bool:
    """Whether the agent would accept ``value`` for a setting configured as ``configured`` (floors per field)."""
    want, have = configured.split(), value.split()
    if mode == "exact" or len(want) != len(have) or not all(x.lstrip("-").isdigit() for x in want + have):
        return want == have
    return all(int(h) >= int(w) for w, h in zip(want, have))


def sysctl_d_check(probe: Probe) -> CheckResult:
    cid = "owners.sysctl_d"
    settings = probe.config.sysctl or ()
    if not settings:
        return CheckResult(cid, Status.SKIP, None, None, "", "[sysctl] is not configured")
    conflicts: list[str] = []
    agreeing: list[str] = []
    files = sysctl_files(probe)
    for path in files:
        conf = parse_sysctl_conf(probe.host.read_or(path, "") or "")
        for s in settings:
            if s.name in conf:
                entry = f"{path}: {s.name} = {conf[s.name]}"
                (agreeing if accepts(s.value, s.mode, conf[s.name]) else conflicts).append(entry)
    want = "no other file sets a managed key to another value"
    if conflicts:
        return CheckResult(
            cid,
            Status.WARN,
            "; ".join(conflicts),
            want,
            "remove the key from that file or make it agree with [sysctl]",
            "systemd-sysctl writes it at boot, the agent writes it back: two owners",
        )
    return CheckResult(cid, Status.PASS, "; ".join(agreeing) or f"{len(files)} file(s), none set a managed key", want)


def tuned_check(probe: Probe) -> CheckResult:
    cid = "owners.tuned"
    cfg = probe.config
    manages = any(x is not None for x in (cfg.sysctl, cfg.thp, cfg.block, cfg.cpu, cfg.irq))
    pid = probe.running("tuned")
    profile = (probe.host.read_or("/etc/tuned/active_profile", "") or "").strip()
    if pid is None:
        return CheckResult(
            cid,
            Status.PASS,
            "tuned not running",
            "one owner per setting",
            "",
            f"profile file names {profile!r} but tuned is stopped" if profile else "",
        )
    current = f"tuned pid {pid}, profile {profile or '(none)'}"
    if not manages:
        return CheckResult(
            cid, Status.PASS, current, "one owner per setting", "", "the agent manages no kernel setting"
        )
    return CheckResult(
        cid,
        Status.WARN,
        current,
        "one owner per setting",
        "tuned-adm off (or a profile without sysctl/vm/disk/cpu), or drop those sections from the config",
        "tuned re-applies its profile over the agent's values: drift flaps",
    )


def power_profiles_check(probe: Probe) -> CheckResult:
    cid = "owners.power_profiles"
    if probe.config.cpu is None or probe.config.cpu.governor is None:
        return CheckResult(cid, Status.SKIP, None, None, "", "[cpu] governor is not managed")
    owner: Optional[int] = None
    name = ""
    for comm in ("power-profiles-daemon", "tuned-ppd"):
        owner = probe.running(comm)
        if owner is not None:
            name = comm
            break
    if owner is None:
        return CheckResult(cid, Status.PASS, "no power-profiles daemon", "one owner of the CPU governor")
    return CheckResult(
        cid,
        Status.WARN,
        f"{name} pid {owner}",
        "one owner of the CPU governor",
        f"systemctl disable --now {name}.service",
        "it rewrites the governor on every profile or power-source change",
    )


def checks(probe: Probe) -> list[CheckResult]:
    return [numa_balancing_check(probe), tuned_check(probe), sysctl_d_check(probe), power_profiles_check(probe)]


CHECKS = Registered(("kernel.numa_balancing", "owners.tuned", "owners.sysctl_d", "owners.power_profiles"), checks)
