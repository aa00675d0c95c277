#!/usr/bin/env bash
# Build the VM test bed's base image: Debian 12 (bookworm) from Debian's own packages.
#
#   build_image.sh OUTDIR
#
# Writes OUTDIR/base.raw (sparse ext4 root filesystem, no partition table), OUTDIR/vmlinuz and
# OUTDIR/initrd.img (the image's own kernel and initrd, for qemu's direct kernel boot) and
# OUTDIR/packages.txt (dpkg -l of the image). The caller (tests/vm/vm.py) keys OUTDIR by a hash of
# this script, so any change here rebuilds the image. Needs root, debootstrap and e2fsprogs.
set -euo pipefail

OUT=${1:?usage: build_image.sh OUTDIR}
MIRROR=${VLLM_NODEAGENT_VM_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
SIZE=${VLLM_NODEAGENT_VM_DISK_SIZE:-4G}
PACKAGES=(
    linux-image-amd64 systemd systemd-sysv udev dbus
    openssh-server numactl irqbalance python3 python3-venv iproute2
    procps kmod ca-certificates
    python3-apt sudo
    hwloc-nox
    slurm-wlm munge
)
# hwloc-nox: lstopo-no-graphics, the peer that test_03b cross-checks the agent's topology against.
# slurm-wlm, munge: the real Slurm of test_slurm_vm.py (slurmctld + slurmd in one guest).
# python3-apt and sudo: what Ansible's apt module and `become` need on a managed Debian host (the
# guests have no way out, so Ansible cannot install python3-apt on demand).

WORK=$(mktemp -d "${OUT}.work.XXXXXX")
cleanup() {
    for m in proc sys dev; do
        if mountpoint -q "$WORK/root/$m"; then umount -l "$WORK/root/$m"; fi
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
ROOT=$WORK/root

packages_csv=$(IFS=,; echo "${PACKAGES[*]}")
debootstrap --variant=minbase --include="$packages_csv" "$SUITE" "$ROOT" "$MIRROR"

# --- configuration of the guest -------------------------------------------------------------
echo vmbed > "$ROOT/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 vmbed\n' > "$ROOT/etc/hosts"
printf '/dev/vda / ext4 rw,relatime 0 1\n' > "$ROOT/etc/fstab"
printf 'deb %s %s main\n' "$MIRROR" "$SUITE" > "$ROOT/etc/apt/sources.list"
# No password anywhere: root logs in over ssh with the per-run key only.
sed -i 's/^root:[^:]*:/root:*:/' "$ROOT/etc/shadow"

# Network: DHCP on the virtio NIC through systemd-networkd (part of systemd in bookworm).
mkdir -p "$ROOT/etc/systemd/network"
cat > "$ROOT/etc/systemd/network/10-vm.network" <<'NET'
[Match]
Name=en* eth*

[Network]
DHCP=ipv4
NET

# The per-run public key arrives on the kernel command line (vmbed.sshkey=<base64>) and is
# installed before sshd starts: the base image holds no key and stays reusable.
cat > "$ROOT/usr/local/sbin/vmbed-sshkey" <<'KEY'
#!/bin/sh
set -eu
for word in $(cat /proc/cmdline); do
    case "$word" in
        vmbed.sshkey=*)
            mkdir -p /root/.ssh
            chmod 700 /root/.ssh
            echo "${word#vmbed.sshkey=}" | base64 -d > /root/.ssh/authorized_keys
            chmod 600 /root/.ssh/authorized_keys
            ;;
    esac
done
KEY
chmod 755 "$ROOT/usr/local/sbin/vmbed-sshkey"
cat > "$ROOT/etc/systemd/system/vmbed-sshkey.service" <<'UNIT'
[Unit]
Description=Install the test bed's ssh key from the kernel command line
Before=ssh.service
DefaultDependencies=no
After=local-fs.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/vmbed-sshkey

[Install]
WantedBy=multi-user.target
UNIT
cat > "$ROOT/etc/ssh/sshd_config.d/vmbed.conf" <<'SSHD'
PermitRootLogin prohibit-password
PasswordAuthentication no
UseDNS no
SSHD

chroot "$ROOT" systemctl enable systemd-networkd.service vmbed-sshkey.service ssh.service irqbalance.service
# Nothing in the guest should wait for a network that never comes or pull updates.
chroot "$ROOT" systemctl mask systemd-networkd-wait-online.service apt-daily.timer apt-daily-upgrade.timer \
    e2scrub_all.timer fstrim.timer 2>/dev/null || true
# A small persistent journal so "the service came back after reboot" can be read from the journal.
mkdir -p "$ROOT/var/log/journal"

chroot "$ROOT" dpkg -l > "$OUT.packages.tmp"
chroot "$ROOT" apt-get clean

# --- kernel, initrd and the disk ------------------------------------------------------------
kernel=$(find "$ROOT/boot" -maxdepth 1 -name 'vmlinuz-*' | sort | tail -n1)
initrd=$(find "$ROOT/boot" -maxdepth 1 -name 'initrd.img-*' | sort | tail -n1)
test -n "$kernel" && test -n "$initrd"

mkdir -p "$OUT.tmp"
cp "$kernel" "$OUT.tmp/vmlinuz"
cp "$initrd" "$OUT.tmp/initrd.img"
mv "$OUT.packages.tmp" "$OUT.tmp/packages.txt"
truncate -s "$SIZE" "$OUT.tmp/base.raw"
mkfs.ext4 -q -L vmroot -d "$ROOT" "$OUT.tmp/base.raw"
rm -rf "$OUT"
mv "$OUT.tmp" "$OUT"
echo "image ready: $OUT"
