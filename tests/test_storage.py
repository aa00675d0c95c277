"""storage: the device under a file from sysfs/mountinfo (fake trees shaped like the kernel's, and this host),
and the prewarm reader picked for it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from vllm_nodeagent.host import Host
from vllm_nodeagent.prewarm.reader import PARALLEL_READER, SEQUENTIAL_READER, reader_for
from vllm_nodeagent.prewarm.warm import prewarm
from vllm_nodeagent.storage import storage_of


def disk(
    root: Path,
    devnum: str,
    syspath: str,
    *,
    rot: int,
    nr: int,
    queues: int,
    driver: Optional[str] = None,
    partition_of: Optional[str] = None,
) -> None:
    """/sys/dev/block/<devnum> -> <syspath>, a disk with a queue (or a partition under ``partition_of``)."""
    d = root / syspath.lstrip("/")
    d.mkdir(parents=True, exist_ok=True)
    link = root / "sys/dev/block" / devnum
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(d, link.parent))
    if partition_of is not None:
        (d / "partition").write_text("1\n")
        return
    (d / "queue").mkdir()
    (d / "queue/rotational").write_text(f"{rot}\n")
    (d / "queue/nr_requests").write_text(f"{nr}\n")
    (d / "queue/read_ahead_kb").write_text("128\n")
    for q in range(queues):
        (d / "mq" / str(q)).mkdir(parents=True)
    if driver:
        drv = root / "sys/bus" / driver
        drv.mkdir(parents=True, exist_ok=True)
        (d / "device").mkdir()
        (d / "device/driver").symlink_to(os.path.relpath(drv, d / "device"))


def test_virtio_disk_reported_rotational_still_reads_in_parallel(tmp_path: Path) -> None:
    disk(
        tmp_path,
        "254:0",
        "/sys/devices/pci0000:00/0000:00:02.0/virtio1/block/vda",
        rot=1,
        nr=256,
        queues=1,
        driver="virtio/drivers/virtio_blk",
    )
    st = storage_of(Host(tmp_path), os.makedev(254, 0))
    assert (st.kind, st.name, st.rotational, st.nr_requests, st.hw_queues) == ("virtio", "vda", True, 256, 1)
    assert reader_for(st) == PARALLEL_READER  # the hypervisor serves many requests at once (measured)
    # the same device named otherwise: the driver link still says virtio
    disk(
        tmp_path,
        "254:16",
        "/sys/devices/pci0000:00/0000:00:03.0/virtio2/block/xvdb",
        rot=1,
        nr=256,
        queues=1,
        driver="virtio/drivers/virtio_blk",
    )
    assert storage_of(Host(tmp_path), os.makedev(254, 16)).kind == "virtio"


def test_nvme_partition_reads_in_parallel(tmp_path: Path) -> None:
    base = "/sys/devices/pci0000:40/0000:41:00.0/nvme/nvme0/nvme0n1"
    disk(tmp_path, "259:0", base, rot=0, nr=1023, queues=16)
    disk(tmp_path, "259:1", base + "/nvme0n1p1", rot=0, nr=0, queues=0, partition_of=base)
    st = storage_of(Host(tmp_path), os.makedev(259, 1))
    assert (st.kind, st.name, st.hw_queues) == ("nvme", "nvme0n1", 16)
    assert reader_for(st) == PARALLEL_READER and PARALLEL_READER.threads > 1


def test_md_raid_takes_its_members_kind(tmp_path: Path) -> None:
    for i in range(2):
        disk(
            tmp_path,
            f"259:{i}",
            f"/sys/devices/pci0000:40/0000:4{i}:00.0/nvme/nvme{i}/nvme{i}n1",
            rot=0,
            nr=1023,
            queues=8,
        )
    disk(tmp_path, "9:0", "/sys/devices/virtual/block/md0", rot=0, nr=128, queues=0)
    slaves = tmp_path / "sys/devices/virtual/block/md0/slaves"
    slaves.mkdir()
    for i in range(2):
        (slaves / f"nvme{i}n1").symlink_to(f"/sys/devices/pci0000:40/0000:4{i}:00.0/nvme/nvme{i}/nvme{i}n1")
    assert storage_of(Host(tmp_path), os.makedev(9, 0)).kind == "nvme"
    # a SATA member makes the array "unknown"
    disk(tmp_path, "8:0", "/sys/devices/pci0000:00/ata1/host0/block/sda", rot=0, nr=64, queues=1)
    (slaves / "sda").symlink_to("/sys/devices/pci0000:00/ata1/host0/block/sda")
    assert storage_of(Host(tmp_path), os.makedev(9, 0)).kind == "unknown"


def test_spinning_and_sata_ssd_and_missing_sysfs(tmp_path: Path) -> None:
    disk(tmp_path, "8:0", "/sys/devices/x/block/sda", rot=1, nr=64, queues=1)
    disk(tmp_path, "8:16", "/sys/devices/x/block/sdb", rot=0, nr=64, queues=1)
    h = Host(tmp_path)
    hdd = storage_of(h, os.makedev(8, 0))
    assert hdd.kind == "rotational" and reader_for(hdd) == SEQUENTIAL_READER  # streams would seek against each other
    assert SEQUENTIAL_READER.threads == 1 and SEQUENTIAL_READER.segment_bytes == 0
    assert storage_of(h, os.makedev(8, 16)).kind == "ssd"
    assert storage_of(h, os.makedev(8, 32)).kind == "unknown"  # no sysfs entry: never raises
    assert [storage_of(h, os.makedev(8, m)).parallel for m in (0, 16, 32)] == [False, True, True]


def test_network_and_memory_filesystems_from_mountinfo(tmp_path: Path) -> None:
    mi = tmp_path / "proc/self/mountinfo"
    mi.parent.mkdir(parents=True)
    mi.write_text(
        "29 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n"
        "97 29 0:52 / /models rw,relatime shared:50 - nfs4 filer:/export/models rw,vers=4.2\n"
        "98 29 0:53 / /s3 rw,nosuid shared:51 - fuse.mountpoint-s3 mountpoint-s3 rw,user_id=0\n"
        "99 29 0:54 / /dev/shm rw,nosuid,nodev shared:52 - tmpfs tmpfs rw\n"
        "100 29 0:55 / /ovl rw shared:53 - overlay overlay rw,lowerdir=/a\n"
    )
    h = Host(tmp_path)
    nfs, s3, shm, ovl = (storage_of(h, os.makedev(0, m)) for m in (52, 53, 54, 55))
    assert (nfs.kind, nfs.name, nfs.parallel) == ("network", "nfs4", True)
    assert (s3.kind, s3.parallel) == ("network", True)
    assert (shm.kind, shm.parallel) == ("memory", False)
    assert (ovl.kind, ovl.parallel) == ("unknown", True)


def test_this_hosts_disk_matches_sys_block() -> None:
    """Cross-check against the real kernel: the disk under / is a /sys/block entry with the same rotational flag."""
    dev = os.stat("/").st_dev
    st = storage_of(Host("/"), dev)
    if os.major(dev) == 0:  # / on overlay/tmpfs (a container): no block device to compare with
        assert st.name != ""
        return
    assert st.name in os.listdir("/sys/block")
    with open(f"/sys/block/{st.name}/queue/rotational") as f:
        assert st.rotational == (f.read().strip() == "1")


def test_prewarm_reports_the_reader_it_picked(tmp_path: Path) -> None:
    """The reader follows the storage the fake root's sysfs describes for the files' real device number."""
    data = tmp_path / "model"
    data.mkdir()
    (data / "model.safetensors").write_bytes(os.urandom(3 << 20))
    dev = os.stat(data / "model.safetensors").st_dev
    root = tmp_path / "root"
    devnum = f"{os.major(dev)}:{os.minor(dev)}"
    if os.major(dev) == 0:
        mi = root / "proc/self/mountinfo"
        mi.parent.mkdir(parents=True)
        mi.write_text(f"97 29 {devnum} / / rw - tmpfs tmpfs rw\n")
    else:
        disk(root, devnum, "/sys/devices/pci0000:00/ata1/host0/block/sda", rot=1, nr=64, queues=1)
    hdd = prewarm([str(data)], host=Host(root), budget_bytes=None)
    assert hdd.ok and hdd.resident_fraction == 1.0
    assert "1 thread(s), whole files" in hdd.reader and hdd.threads == 1, hdd.reader
    unknown = prewarm([str(data)], host=Host(tmp_path / "empty-root"), budget_bytes=None)  # no sysfs at all
    assert "4 thread(s), 256 MiB segments" in unknown.reader and "(unknown)" in unknown.reader
    assert prewarm([str(data)], host=Host(root), budget_bytes=None, threads=3).threads == 3
