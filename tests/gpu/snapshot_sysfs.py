#!/usr/bin/env python3
"""Copy the parts of /sys and /proc that discovery and doctor read into a tree usable as --root.

Regular files are copied by content, links are kept as links (relative, as the kernel makes them), so the
tree answers like the real host. Read-only on the source.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

GLOBS = [
    "/sys/devices/system/node/node*/cpulist",
    "/sys/devices/system/node/node*/meminfo",
    "/sys/devices/system/node/online",
    "/sys/devices/system/cpu/online",
    "/sys/devices/system/cpu/cpufreq/policy*/scaling_governor",
    "/sys/devices/system/cpu/cpufreq/policy*/scaling_available_governors",
    "/sys/kernel/mm/transparent_hugepage/enabled",
    "/sys/kernel/mm/transparent_hugepage/defrag",
    "/proc/meminfo",
    "/proc/sys/vm/max_map_count",
    "/proc/sys/net/core/rmem_max",
    "/proc/sys/net/core/wmem_max",
    "/proc/sys/net/ipv4/tcp_rmem",
    "/proc/sys/net/ipv4/tcp_wmem",
    "/proc/interrupts",
    # doctor's readiness checks (vllm_nodeagent/checks/)
    "/proc/modules",
    "/proc/cmdline",
    "/proc/self/mountinfo",
    "/proc/sys/kernel/numa_balancing",
    "/etc/systemd/logind.conf",
    "/etc/systemd/logind.conf.d/*.conf",
    "/etc/login.defs",
    "/etc/passwd",
    "/etc/group",
    "/etc/sysctl.conf",
    "/etc/sysctl.d/*.conf",
    "/usr/lib/sysctl.d/*.conf",
    "/run/sysctl.d/*.conf",
    "/etc/tuned/active_profile",
    "/etc/ld.so.cache",
    "/sys/kernel/iommu_groups/*/type",
    "/etc/systemd/system/vllm-nodeagent*.service",
    "/usr/lib/systemd/system/vllm-nodeagent*.service",
]
PCI_ATTRS = [
    "vendor",
    "device",
    "class",
    "numa_node",
    "local_cpulist",
    "local_cpus",
    "label",
    "irq",
    "current_link_width",
    "max_link_width",
    "current_link_speed",
    "max_link_speed",
]


def copy_file(src: Path, root: Path) -> None:
    try:
        data = src.read_bytes()
    except OSError:
        return
    dst = root / str(src).lstrip("/")
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(data)


def copy_link_chain(path: Path, root: Path) -> None:
    """Recreate every link met on the way from ``path`` to its target, then return."""
    parts = Path(path).parts[1:]
    cur = Path("/")
    for part in parts:
        cur = cur / part
        if cur.is_symlink():
            dst = root / str(cur).lstrip("/")
            dst.parent.mkdir(parents=True, exist_ok=True)
            if not dst.is_symlink():
                os.symlink(os.readlink(cur), dst)
            cur = Path(os.path.realpath(cur))
            copy_link_chain(cur, root)
            return


def main(dest: str) -> int:
    root = Path(dest)
    for pattern in GLOBS:
        for p in Path("/").glob(pattern.lstrip("/")):
            copy_file(Path("/") / p, root)
    for dev in Path("/sys/bus/pci/devices").iterdir():
        vendor = (dev / "vendor").read_text().strip()
        cls = (dev / "class").read_text().strip()
        if vendor == "0x10de" or cls.startswith(("0x02", "0x01")):
            copy_link_chain(dev, root)
            real = Path(os.path.realpath(dev))
            for attr in PCI_ATTRS:
                copy_file(real / attr, root)
            if vendor == "0x10de":  # the bridges above a GPU: their config space holds the ACS control bits
                for parent in real.parents:
                    if (parent / "config").exists() and parent.name[:4].isalnum() and ":" in parent.name:
                        copy_file(parent / "config", root)
                if (real / "iommu_group").exists():
                    copy_link_chain(real / "iommu_group", root)
            msi = real / "msi_irqs"
            if msi.is_dir():
                for irq in msi.iterdir():
                    copy_file(irq, root)
                    copy_file(Path(f"/proc/irq/{irq.name}/smp_affinity_list"), root)
    for link in [*Path("/sys/class/net").iterdir(), *Path("/sys/block").iterdir()]:
        copy_link_chain(link, root)
        real = Path(os.path.realpath(link))
        if (real / "device").exists():
            copy_link_chain(real / "device", root)
        for attr in ("queue/scheduler", "queue/rotational"):
            copy_file(real / attr, root)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
