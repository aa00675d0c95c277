"""Builds fake root trees shaped like real hosts' /sys and /proc (links where the kernel has links)."""

from __future__ import annotations

import errno
import grp
import os
import pwd
from pathlib import Path
from typing import Optional

from vllm_nodeagent.host import Host, HostError
from vllm_nodeagent.host.parse import ParseError, format_cpulist, parse_bracket_list


def cpumask(cpus: list[int]) -> str:
    """sysfs hex mask form: 32-bit words, most significant first."""
    value = sum(1 << c for c in cpus)
    words = max(1, (max(cpus, default=0) // 32) + 1)
    return ",".join(f"{(value >> (32 * w)) & 0xFFFFFFFF:08x}" for w in reversed(range(words)))


def real_accounts(root: Path, *names: str) -> None:
    """The tree's own /etc/passwd and /etc/group holding root and ``names`` with this machine's real uid/gid, for
    trees whose processes really run as those users (under --root the agent reads accounts from the tree only)."""
    users = [pwd.getpwnam("root"), *(pwd.getpwnam(n) for n in names if n != "root")]
    gids = sorted({u.pw_gid for u in users})
    etc = root / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "passwd").write_text("".join(f"{u.pw_name}:x:{u.pw_uid}:{u.pw_gid}::{u.pw_dir}:/bin/false\n" for u in users))
    (etc / "group").write_text("".join(f"{grp.getgrgid(g).gr_name}:x:{g}:\n" for g in gids))


class FakeHost:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def write(self, host_path: str, text: str) -> Path:
        p = self.root / host_path.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text if text.endswith("\n") or text == "" else text + "\n")
        return p

    def accounts(self, *names: str) -> None:
        """The tree's own /etc/passwd and /etc/group: root and ``names``, with the machine's uids (real_accounts)."""
        real_accounts(self.root, *names)

    def link(self, host_path: str, target: str) -> None:
        p = self.root / host_path.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, p)

    # --- building blocks -------------------------------------------------------------------------------
    def cpus(self, count: int) -> None:
        self.write("/sys/devices/system/cpu/online", f"0-{count - 1}")

    def write_raw(self, host_path: str, data: bytes) -> Path:
        p = self.root / host_path.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        return p

    def numa_node(self, node: int, cpus: list[int], mem_kb: int, cpulist: bool = True) -> None:
        """A node as the kernel shows it; each CPU also gets its topology directory (package = node), which
        is what hwloc's lstopo needs to read the tree (HWLOC_FSROOT)."""
        base = f"/sys/devices/system/node/node{node}"
        if cpulist:
            self.write(f"{base}/cpulist", format_cpulist(cpus))
        self.write(f"{base}/cpumap", cpumask(cpus))
        self.write(
            f"{base}/meminfo",
            f"Node {node} MemTotal:       {mem_kb} kB\nNode {node} MemFree:        {mem_kb // 2} kB\n",
        )
        for c in cpus:
            topo = f"/sys/devices/system/cpu/cpu{c}/topology"
            self.write(f"{topo}/physical_package_id", str(node))
            self.write(f"{topo}/core_id", str(c))
            for name in ("package_cpus", "core_siblings"):
                self.write(f"{topo}/{name}", cpumask(cpus))
            for name in ("core_cpus", "thread_siblings"):
                self.write(f"{topo}/{name}", cpumask([c]))

    def allowed(self, cpus: str, mems: str) -> None:
        """This process's /proc/self/status affinity lines, as the kernel prints them."""
        self.write(
            "/proc/self/status",
            f"Name:\tvllm-nodeagent\nState:\tR (running)\nCpus_allowed_list:\t{cpus}\nMems_allowed_list:\t{mems}\n",
        )

    def cgroup_v2(self, path: str, cpus: str, mems: str) -> None:
        """A pure cgroup-v2 host whose process sits in ``path`` with that effective cpuset."""
        self.write("/proc/self/cgroup", f"0::{path}")
        mounts = "sysfs /sys sysfs rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec 0 0\n"
        self.write("/proc/self/mounts", mounts)
        self.write("/proc/mounts", mounts)
        self.write("/sys/fs/cgroup/cgroup.controllers", "cpuset cpu io memory pids")
        self.write(f"/sys/fs/cgroup{path}/cpuset.cpus.effective", cpus)
        self.write(f"/sys/fs/cgroup{path}/cpuset.mems.effective", mems)

    def cgroup_v1(self, path: str, cpus: str, mems: str) -> None:
        """A cgroup-v1 cpuset hierarchy (Slurm's task/cgroup on older distributions)."""
        self.write("/proc/self/cgroup", f"4:memory:{path}\n3:cpuset:{path}\n0::/")
        mounts = "cgroup /sys/fs/cgroup/cpuset cgroup rw,nosuid,nodev,noexec,relatime,cpuset 0 0\n"
        self.write("/proc/self/mounts", mounts)
        self.write("/proc/mounts", mounts)
        self.write(f"/sys/fs/cgroup/cpuset{path}/cpuset.effective_cpus", cpus)
        self.write(f"/sys/fs/cgroup/cpuset{path}/cpuset.effective_mems", mems)

    def nvidia_numa_status(self, bdf: str, node: int, status: str = "online") -> None:
        """The driver's /proc/driver/nvidia/gpus/<bus>/numa_status (format of nv-procfs.c)."""
        self.write(
            f"/proc/driver/nvidia/gpus/{bdf}/numa_status",
            f"Node:      {node}\nStatus:    {status}\nAddress:   400000000000\nSize:      1780000000\n",
        )

    def meminfo(self, total_kb: int, available_kb: int) -> None:
        self.write(
            "/proc/meminfo",
            f"MemTotal:       {total_kb} kB\nMemFree:        {available_kb} kB\n"
            f"MemAvailable:   {available_kb} kB\nHugePages_Total:       0\n",
        )

    def pci_device(
        self,
        bdf: str,
        vendor: str,
        cls: str,
        numa: int,
        local_cpus: Optional[list[int]],
        root_port: str = "pci0000:00",
        irqs: tuple[int, ...] = (),
        device_id: str = "0x2330",
    ) -> str:
        real = f"/sys/devices/{root_port}/{bdf}"
        self.write(f"{real}/vendor", vendor)
        self.write(f"{real}/device", device_id)
        self.write(f"{real}/class", cls)
        self.write(f"{real}/numa_node", str(numa))
        if local_cpus is not None:
            self.write(f"{real}/local_cpulist", format_cpulist(local_cpus))
            self.write(f"{real}/local_cpus", cpumask(local_cpus))
        for irq in irqs:
            self.write(f"{real}/msi_irqs/{irq}", "msix")
            self.write(f"/proc/irq/{irq}/smp_affinity_list", "0-255")
        self.link(f"/sys/bus/pci/devices/{bdf}", f"../../../devices/{root_port}/{bdf}")
        return real

    def gpu(self, bdf: str, numa: int, local_cpus: Optional[list[int]], irqs: tuple[int, ...] = ()) -> None:
        self.pci_device(bdf, "0x10de", "0x030200", numa, local_cpus, irqs=irqs)

    def nic(self, name: str, bdf: str, numa: int, local_cpus: list[int], irqs: tuple[int, ...] = ()) -> None:
        real = self.pci_device(bdf, "0x15b3", "0x020000", numa, local_cpus, irqs=irqs, device_id="0x101d")
        self.write(f"{real}/net/{name}/address", "00:11:22:33:44:55")
        self.link(f"{real}/net/{name}/device", "../../../" + bdf)
        self.link(f"/sys/class/net/{name}", f"../../devices/pci0000:00/{bdf}/net/{name}")

    def virtual_nic(self, name: str) -> None:
        self.write(f"/sys/devices/virtual/net/{name}/address", "00:00:00:00:00:00")
        self.link(f"/sys/class/net/{name}", f"../../devices/virtual/net/{name}")

    def block(self, name: str, schedulers: str, rotational: bool, bdf: Optional[str] = "0000:00:10.0") -> None:
        real = f"/sys/devices/pci0000:00/{bdf}/block/{name}" if bdf else f"/sys/devices/virtual/block/{name}"
        self.write(f"{real}/queue/scheduler", schedulers)
        self.write(f"{real}/queue/rotational", "1" if rotational else "0")
        if bdf:
            self.link(f"{real}/device", f"../../../{bdf}")
        self.link(f"/sys/block/{name}", f"../devices/{real.split('/sys/devices/', 1)[1]}")

    def cpufreq(self, policies: int, governor: str, available: str = "performance powersave") -> None:
        for p in range(policies):
            base = f"/sys/devices/system/cpu/cpufreq/policy{p}"
            self.write(f"{base}/scaling_governor", governor)
            self.write(f"{base}/scaling_available_governors", available)

    def thp(
        self, enabled: str = "always [madvise] never", defrag: str = "always defer defer+madvise [madvise] never"
    ) -> None:
        self.write("/sys/kernel/mm/transparent_hugepage/enabled", enabled)
        self.write("/sys/kernel/mm/transparent_hugepage/defrag", defrag)

    def sysctl(self, name: str, value: str) -> None:
        self.write("/proc/sys/" + name.replace(".", "/"), value)

    def default_sysctls(self) -> None:
        self.sysctl("vm.max_map_count", "65530")
        self.sysctl("net.core.rmem_max", "212992")
        self.sysctl("net.core.wmem_max", "212992")
        self.sysctl("net.ipv4.tcp_rmem", "4096\t131072\t6291456")
        self.sysctl("net.ipv4.tcp_wmem", "4096\t16384\t4194304")


# --- the named hosts ---------------------------------------------------------------------------------------
def two_socket_8gpu(root: Path) -> FakeHost:
    """Like a dual Xeon 8480+ HGX H100 box: 2 nodes × 56 cores (SMT off for brevity), 4 GPUs per socket."""
    h = FakeHost(root)
    h.cpus(112)
    node0, node1 = list(range(56)), list(range(56, 112))
    h.numa_node(0, node0, 1056 * 1024 * 1024)
    h.numa_node(1, node1, 1056 * 1024 * 1024)
    h.meminfo(2112 * 1024 * 1024, 2000 * 1024 * 1024)
    for i, bus in enumerate(["18", "2a", "3a", "5d"]):
        h.gpu(f"0000:{bus}:00.0", 0, node0, irqs=(100 + 2 * i, 101 + 2 * i))
    for i, bus in enumerate(["9a", "ab", "ba", "db"]):
        h.gpu(f"0000:{bus}:00.0", 1, node1, irqs=(120 + 2 * i, 121 + 2 * i))
    # An NVIDIA HDA audio function and a BMC's VGA (ASPEED): neither is a GPU.
    h.pci_device("0000:18:00.1", "0x10de", "0x040300", 0, node0)
    h.pci_device("0000:03:00.0", "0x1a03", "0x030000", 0, node0)
    h.nic("ens1f0np0", "0000:1b:00.0", 0, node0, irqs=(200, 201))
    h.nic("ens9f0np0", "0000:9c:00.0", 1, node1, irqs=(210, 211))
    h.virtual_nic("lo")
    h.block("nvme0n1", "[none] mq-deadline kyber bfq", False, "0000:5e:00.0")
    h.block("nvme1n1", "[none] mq-deadline kyber bfq", False, "0000:dc:00.0")
    h.block("sda", "mq-deadline [bfq] none", True, "0000:00:17.0")
    h.block("loop0", "[none] mq-deadline", False, None)
    h.cpufreq(112, "powersave")
    h.thp("[always] madvise never", "always defer defer+madvise [madvise] never")
    h.default_sysctls()
    h.write("/proc/interrupts", "           CPU0\n  0:   10   IO-APIC   2-edge      timer\n")
    return h


def workstation(root: Path) -> FakeHost:
    """One socket, 16 CPUs, one consumer GPU whose firmware reports numa_node -1, no NUMA directory."""
    h = FakeHost(root)
    h.cpus(16)
    h.meminfo(64 * 1024 * 1024, 50 * 1024 * 1024)
    h.gpu("0000:01:00.0", -1, list(range(16)))
    h.pci_device("0000:01:00.1", "0x10de", "0x040300", -1, list(range(16)))
    h.nic("enp5s0", "0000:05:00.0", -1, list(range(16)))
    h.block("nvme0n1", "[none] mq-deadline kyber bfq", False, "0000:04:00.0")
    h.cpufreq(16, "schedutil", "performance powersave schedutil")
    h.thp()
    h.default_sysctls()
    return h


def vm_no_gpu(root: Path) -> FakeHost:
    """A cloud VM: one node, no cpufreq, virtio disk (rotational=1), virtio-net behind a PCI function."""
    h = FakeHost(root)
    h.cpus(2)
    h.numa_node(0, [0, 1], 8 * 1024 * 1024)
    h.meminfo(8 * 1024 * 1024, 7 * 1024 * 1024)
    real = h.pci_device("0000:00:03.0", "0x1af4", "0x020000", -1, [0, 1], device_id="0x1000")
    h.write(f"{real}/virtio0/net/eth0/address", "52:54:00:12:34:56")
    h.link(f"{real}/virtio0/net/eth0/device", "../../../virtio0")
    h.link("/sys/class/net/eth0", "../../devices/pci0000:00/0000:00:03.0/virtio0/net/eth0")
    h.virtual_nic("lo")
    h.block("vda", "[mq-deadline] kyber bfq none", True, "0000:00:04.0")
    h.thp("always [madvise] never")
    h.default_sysctls()
    return h


def slurm_cgroup_v2_job(root: Path) -> FakeHost:
    """An 8-node box (4 CPUs a node, one GPU on node 0 and one on node 6) seen from inside a Slurm job step
    whose cgroup-v2 cpuset is CPUs 0-5 / mems 0-5."""
    h = FakeHost(root)
    h.cpus(32)
    for node in range(8):
        h.numa_node(node, list(range(4 * node, 4 * node + 4)), 64 * 1024 * 1024)
    h.meminfo(512 * 1024 * 1024, 400 * 1024 * 1024)
    h.write("/sys/devices/system/node/online", "0-7")
    h.allowed("0-5", "0-5")
    h.cgroup_v2("/system.slice/slurmstepd.scope/job_4242/step_0/user/task_0", "0-5", "0-5")
    h.gpu("0000:18:00.0", 0, list(range(4)))
    h.gpu("0000:c8:00.0", 6, list(range(24, 28)))
    return h


def offline_cpus_with_cxl(root: Path) -> FakeHost:
    """Two sockets of 8 CPUs with 2 CPUs each taken offline (nodeN/cpulist still lists them, as some kernels
    do) and a CXL memory expander as CPU-less node 2."""
    h = FakeHost(root)
    h.write("/sys/devices/system/cpu/online", "0-5,8-13")
    h.write("/sys/devices/system/cpu/possible", "0-15")
    h.numa_node(0, list(range(8)), 256 * 1024 * 1024)
    h.numa_node(1, list(range(8, 16)), 256 * 1024 * 1024)
    h.numa_node(2, [], 128 * 1024 * 1024)
    h.write("/sys/devices/system/node/online", "0-2")
    h.meminfo(640 * 1024 * 1024, 600 * 1024 * 1024)
    h.gpu("0000:3b:00.0", 0, list(range(8)))
    h.gpu("0000:af:00.0", 1, list(range(8, 16)))
    return h


def cpumap_only(root: Path) -> FakeHost:
    """An old kernel: node directories have cpumap and no cpulist."""
    h = FakeHost(root)
    h.cpus(16)
    h.numa_node(0, list(range(8)), 64 * 1024 * 1024, cpulist=False)
    h.numa_node(1, list(range(8, 16)), 64 * 1024 * 1024, cpulist=False)
    h.meminfo(128 * 1024 * 1024, 100 * 1024 * 1024)
    h.gpu("0000:81:00.0", 1, list(range(8, 16)))
    return h


def gh200_like(root: Path) -> FakeHost:
    """Grace Hopper: 72 Grace cores on node 0, the H100's HBM onlined by the driver as CPU-less node 1, the GPU
    in PCI domain 0009 with node 0 as its locality (driver numa_status names node 1 as its memory)."""
    h = FakeHost(root)
    h.cpus(72)
    h.numa_node(0, list(range(72)), 480 * 1024 * 1024)
    h.numa_node(1, [], 96 * 1024 * 1024)
    h.write("/sys/devices/system/node/online", "0-1")
    h.meminfo(576 * 1024 * 1024, 500 * 1024 * 1024)
    h.gpu("0009:01:00.0", 0, list(range(72)))
    h.nvidia_numa_status("0009:01:00.0", 1)
    return h


def no_pci_locality(root: Path) -> FakeHost:
    """Two nodes whose firmware gives PCI devices no proximity: numa_node -1, local_cpulist = every CPU."""
    h = FakeHost(root)
    h.cpus(16)
    h.numa_node(0, list(range(8)), 64 * 1024 * 1024)
    h.numa_node(1, list(range(8, 16)), 64 * 1024 * 1024)
    h.meminfo(128 * 1024 * 1024, 100 * 1024 * 1024)
    h.gpu("0000:41:00.0", -1, list(range(16)))
    h.nic("enp65s0f0", "0000:41:00.1", -1, list(range(16)))
    return h


def trailing_nul_arm64(root: Path) -> FakeHost:
    """An arm64 5.15-rc kernel printing binary attributes with their NUL: node cpulists end in "\n\0"."""
    h = FakeHost(root)
    h.cpus(128)
    h.numa_node(0, list(range(64)), 256 * 1024 * 1024)
    h.numa_node(1, list(range(64, 128)), 256 * 1024 * 1024)
    h.write_raw("/sys/devices/system/node/node0/cpulist", b"0-63\n\x00")
    h.write_raw("/sys/devices/system/node/node1/cpulist", b"64-127\n\x00")
    h.meminfo(512 * 1024 * 1024, 400 * 1024 * 1024)
    h.gpu("000a:01:00.0", 1, list(range(64, 128)))
    h.write_raw("/sys/devices/pci0000:00/000a:01:00.0/local_cpulist", b"64-127\n\x00")
    return h


def nvml_absent_8gpu(root: Path) -> FakeHost:
    """The 8-GPU server with the driver not loaded: GPUs come from sysfs only."""
    return two_socket_8gpu(root)


class SysfsHost(Host):
    """A Host over a fake tree that answers bracket-list attributes the way the kernel does.

    Writing "madvise" to THP's ``enabled`` makes the kernel show "always [madvise] never"; a value it does not
    offer fails with EINVAL. Plain files keep what was written, as procfs does for sysctls.
    """

    def write(self, host_path: str, value: str) -> None:
        try:
            current = self.read(host_path)
        except HostError:
            current = ""
        try:
            _, offered = parse_bracket_list(current)
        except ParseError:
            offered = []
        if "[" in current and offered:
            if value not in offered:
                raise HostError("write", host_path, OSError(errno.EINVAL, os.strerror(errno.EINVAL)), value)
            value = " ".join(f"[{o}]" if o == value else o for o in offered)
        super().write(host_path, value)


# -- where Slurm and older HPC installs keep the cpuset (issue 24) ------------------------------------------------
def _job_box(root: Path) -> FakeHost:
    """2 sockets x 8 CPUs, one GPU per socket; the job below is given CPUs 2-5 and memory node 0."""
    h = FakeHost(root)
    h.cpus(16)
    h.numa_node(0, list(range(8)), 64 * 1024 * 1024)
    h.numa_node(1, list(range(8, 16)), 64 * 1024 * 1024)
    h.write("/sys/devices/system/node/online", "0-1")
    h.meminfo(128 * 1024 * 1024, 100 * 1024 * 1024)
    h.gpu("0000:17:00.0", 0, list(range(8)))
    h.gpu("0000:b1:00.0", 1, list(range(8, 16)))
    h.allowed("0-15", "0-1")  # a step whose affinity was not narrowed (task/cgroup without task/affinity)
    return h


def mount_table(h: FakeHost, lines: list[tuple[str, str, str, str]]) -> None:
    """(source, point, fstype, options) as /proc/mounts and /proc/self/mountinfo list them (no /proc/self/mounts:
    gathered trees hold the table the gatherer read)."""
    h.write("/proc/mounts", "".join(f"{s} {p} {t} {o} 0 0\n" for s, p, t, o in lines))
    h.write(
        "/proc/self/mountinfo",
        "".join(
            f"{20 + i} 1 0:{30 + i} / {p} rw,relatime shared:{i} - {t} {s} {o}\n"
            for i, (s, p, t, o) in enumerate(lines)
        ),
    )


def legacy_cpuset_fs(root: Path) -> FakeHost:
    """The cpuset filesystem of old HPC kernels at /dev/cpuset: fstype cpuset, files cpus/mems (no prefix), the
    task's path only in /proc/self/cpuset."""
    h = _job_box(root)
    mount_table(h, [("sysfs", "/sys", "sysfs", "rw"), ("none", "/dev/cpuset", "cpuset", "rw")])
    h.write("/proc/self/cpuset", "/slurm/uid_1000/job_42/step_0")
    h.write("/dev/cpuset/cpus", "0-15")
    h.write("/dev/cpuset/mems", "0-1")
    h.write("/dev/cpuset/slurm/uid_1000/job_42/step_0/cpus", "2-5")
    h.write("/dev/cpuset/slurm/uid_1000/job_42/step_0/mems", "0")
    return h


def cgroup_v1_proc_cpuset(root: Path) -> FakeHost:
    """cgroup v1 cpuset at /sys/fs/cgroup/cpuset; the task's path from /proc/self/cpuset (its /proc/self/cgroup
    names only the unified hierarchy, as a cgroup-namespaced task's may)."""
    h = _job_box(root)
    mount_table(
        h,
        [
            ("cgroup2", "/sys/fs/cgroup/unified", "cgroup2", "rw,nosuid,nodev,noexec,relatime"),
            ("cgroup", "/sys/fs/cgroup/cpuset", "cgroup", "rw,nosuid,nodev,noexec,relatime,cpuset"),
        ],
    )
    h.write("/sys/fs/cgroup/unified/cgroup.controllers", "")
    h.write("/proc/self/cgroup", "0::/")
    h.write("/proc/self/cpuset", "/slurm/uid_1000/job_42/step_0")
    base = "/sys/fs/cgroup/cpuset/slurm/uid_1000/job_42/step_0"
    h.write("/sys/fs/cgroup/cpuset/cpuset.cpus", "0-15")
    h.write("/sys/fs/cgroup/cpuset/cpuset.mems", "0-1")
    h.write(f"{base}/cpuset.cpus", "2-5")
    h.write(f"{base}/cpuset.mems", "0")
    return h


def slurm_own_hierarchy(root: Path) -> FakeHost:
    """Slurm's own hierarchy (CgroupMountpoint=/cgroup): cgroup2 at /cgroup/unified holding the cpuset controller,
    v1 freezer and memory at /cgroup/<name> with Slurm's release_agent, a job step path /uid_<uid>/job_<id>/step_<n>;
    systemd's hybrid cgroup2 mount (/sys/fs/cgroup/unified, no controller in this tree) is listed first."""
    h = _job_box(root)
    agent = "release_agent=/etc/slurm/cgroup/release_"
    mount_table(
        h,
        [
            ("sysfs", "/sys", "sysfs", "rw"),
            ("cgroup2", "/sys/fs/cgroup/unified", "cgroup2", "rw,nosuid,nodev,noexec,relatime,nsdelegate"),
            ("cgroup2", "/cgroup/unified", "cgroup2", "rw,nosuid,nodev,noexec,relatime"),
            ("cgroup", "/cgroup/freezer", "cgroup", f"rw,nosuid,nodev,noexec,relatime,freezer,{agent}freezer"),
            ("cgroup", "/cgroup/memory", "cgroup", f"rw,nosuid,nodev,noexec,relatime,memory,{agent}memory"),
        ],
    )
    step = "/uid_1000/job_42/step_0"
    h.write("/sys/fs/cgroup/unified/cgroup.controllers", "")
    h.write("/cgroup/unified/cgroup.controllers", "cpuset cpu io memory pids")
    h.write("/proc/self/cgroup", f"3:memory:{step}/task_0\n2:freezer:{step}\n0::{step}\n")
    h.write(f"/cgroup/unified{step}/cpuset.cpus.effective", "2-5")
    h.write(f"/cgroup/unified{step}/cpuset.mems.effective", "0")
    return h


def cgroup2_dev_cgroup(root: Path) -> FakeHost:
    """cgroup2 mounted at /dev/cgroup (no /sys/fs/cgroup), listed after a cgroup2 mount without cpuset."""
    h = _job_box(root)
    mount_table(
        h,
        [
            ("cgroup2", "/sys/fs/cgroup/unified", "cgroup2", "rw,nosuid,nodev,noexec,relatime"),
            ("cgroup2", "/dev/cgroup", "cgroup2", "rw,nosuid,nodev,noexec,relatime,nsdelegate"),
        ],
    )
    h.write("/sys/fs/cgroup/unified/cgroup.controllers", "")
    step = "/slurm/uid_1000/job_42/step_0"
    h.write("/proc/self/cgroup", f"0::{step}/user/task_0")
    h.write("/dev/cgroup/cgroup.controllers", "cpuset cpu io memory pids")
    h.write(f"/dev/cgroup{step}/user/task_0/cpuset.cpus.effective", "2-5")
    h.write(f"/dev/cgroup{step}/user/task_0/cpuset.mems.effective", "0")
    return h


def per_cpu_offline(root: Path) -> FakeHost:
    """CPUs 2, 3 and 9 offlined through cpuN/online = 0; no global /sys/devices/system/cpu/online file."""
    h = FakeHost(root)
    h.numa_node(0, list(range(8)), 64 * 1024 * 1024)
    h.numa_node(1, list(range(8, 16)), 64 * 1024 * 1024)
    h.meminfo(128 * 1024 * 1024, 100 * 1024 * 1024)
    for c in range(1, 16):  # cpu0 cannot be unplugged: it has no online file
        h.write(f"/sys/devices/system/cpu/cpu{c}/online", "0" if c in (2, 3, 9) else "1")
    h.write("/sys/devices/system/cpu/possible", "0-15")
    h.gpu("0000:17:00.0", 0, list(range(8)))
    return h


def same_cpumap_numa(root: Path) -> FakeHost:
    """Firmware that gives each of 4 nodes the same full cpumap: no locality at all (hwloc ignores the nodes)."""
    h = FakeHost(root)
    h.cpus(16)
    for n in range(4):
        h.numa_node(n, list(range(16)), 32 * 1024 * 1024)
    h.write("/sys/devices/system/node/online", "0-3")
    h.meminfo(128 * 1024 * 1024, 100 * 1024 * 1024)
    h.gpu("0000:17:00.0", 2, list(range(16)))
    return h


def memory_node_not_in_mems_allowed(root: Path) -> FakeHost:
    """A GPU's memory onlined as CPU-less node 2 after this process started: has_memory lists it, the process's
    Mems_allowed_list does not (it was fixed at fork)."""
    h = FakeHost(root)
    h.cpus(16)
    h.numa_node(0, list(range(8)), 64 * 1024 * 1024)
    h.numa_node(1, list(range(8, 16)), 64 * 1024 * 1024)
    h.numa_node(2, [], 96 * 1024 * 1024)
    h.write("/sys/devices/system/node/online", "0-2")
    h.write("/sys/devices/system/node/has_memory", "0-2")
    h.write("/sys/devices/system/node/has_cpu", "0-1")
    h.meminfo(224 * 1024 * 1024, 100 * 1024 * 1024)
    h.allowed("0-15", "0-1")
    h.gpu("0000:17:00.0", 0, list(range(8)))
    return h


def step_on_one_node(root: Path) -> FakeHost:
    """A Slurm step confined to node 0 of a two-node VM (as in the VM bed): its virtio NIC has numa_node -1 and
    local_cpulist 0-1, which spans both nodes; only node 0's CPU is the step's."""
    h = FakeHost(root)
    h.cpus(2)
    h.numa_node(0, [0], 1024 * 1024)
    h.numa_node(1, [1], 1024 * 1024)
    h.write("/sys/devices/system/node/online", "0-1")
    h.meminfo(2 * 1024 * 1024, 1024 * 1024)
    h.allowed("0", "0-1")
    h.cgroup_v2("/system.slice/slurmstepd.scope/job_3/step_0/user/task_0", "0", "0-1")
    real = h.pci_device("0000:00:03.0", "0x1af4", "0x020000", -1, [0, 1], device_id="0x1000")
    h.write(f"{real}/virtio0/net/eth0/address", "52:54:00:12:34:56")
    h.link(f"{real}/virtio0/net/eth0/device", "../../../virtio0")
    h.link("/sys/class/net/eth0", "../../devices/pci0000:00/0000:00:03.0/virtio0/net/eth0")
    return h
