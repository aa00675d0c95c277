"""Sysctls by the shape of their value, for the config's checks and defaults: switches (a floor means nothing)
and ranges (compared as ranges, not per-field floors). Its own module so config.py stays small."""

from __future__ import annotations

# Sysctls whose numbers select a mode (or a bitmask), not an amount: "at least N" means nothing for them.
MODE_SYSCTLS = frozenset(
    {
        "kernel.numa_balancing",
        "vm.overcommit_memory",
        "vm.zone_reclaim_mode",
        "kernel.randomize_va_space",
        "vm.oom_kill_allocating_task",
        "vm.panic_on_oom",
        "kernel.panic_on_oops",
        "kernel.nmi_watchdog",
        "kernel.watchdog",
        "kernel.sched_autogroup_enabled",
        "net.ipv4.ip_forward",
        "net.ipv4.tcp_timestamps",
        "net.ipv4.tcp_sack",
        "net.ipv4.tcp_window_scaling",
        "net.ipv4.tcp_slow_start_after_idle",
        "net.ipv4.tcp_mtu_probing",
        "net.ipv4.tcp_no_metrics_save",
    }
)


# Sysctls that hold a range "LOW HIGH" (and any two-integer sysctl named *_range): the agent's "range" mode —
# the live range must contain the configured one (its low end at most LOW, its high end at least HIGH); apply
# widens it (min of the lows, max of the highs). Per-field floors would raise LOW: "1024 65000" on a host at
# "32768 60999" became "32768 65000".
RANGE_SYSCTLS = frozenset({"net.ipv4.ip_local_port_range", "net.ipv4.ping_group_range"})


def is_range_sysctl(name: str) -> bool:
    return name in RANGE_SYSCTLS or name.endswith("_range")
