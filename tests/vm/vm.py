"""The VM test bed: a cached Debian 12 image and qemu guests with two NUMA nodes.

``base_image()`` builds (once per machine, keyed by a hash of ``build_image.sh``) the image under
``/var/cache/vllm-nodeagent-vm/<hash>/``. ``VM`` boots one guest over a qcow2 overlay of it, with a
second (data) disk, user-mode networking restricted to this machine and ssh forwarded to
127.0.0.1 only, a throw-away key, and the serial console logged to a file. ``Link`` gives two guests a
private L2 link without host root: a second NIC on a qemu UDP socket netdev between two loopback ports.

Accelerator: ``VLLM_NODEAGENT_VM_ACCEL`` = ``auto`` (default) | ``kvm`` | ``tcg``. ``auto`` tries KVM
once per process with a short bounded boot and falls back to TCG (nested KVM guests have been seen
to hang right after decompression on the machines here).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import os
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Optional, Union

from sshmux import Master, end_process

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build_image.sh"
CACHE_ROOT = Path(os.environ.get("VLLM_NODEAGENT_VM_CACHE", "/var/cache/vllm-nodeagent-vm"))

# Bounds on bring-up (wall seconds until ssh answers). TCG boots take ~30 s alone on 2 cores;
# two guests at once share those cores.
TCG_BOOT_TIMEOUT = float(os.environ.get("VLLM_NODEAGENT_VM_BOOT_TIMEOUT", "300"))
KVM_PROBE_TIMEOUT = float(os.environ.get("VLLM_NODEAGENT_VM_KVM_TIMEOUT", "60"))
# A nested KVM guest that hangs does so before printing anything: give up early.
KVM_BANNER_TIMEOUT = float(os.environ.get("VLLM_NODEAGENT_VM_KVM_BANNER_TIMEOUT", "15"))

_accel_decided: Optional[str] = None
_accel_lock = threading.Lock()
_timings_lock = threading.Lock()
timings: dict[str, float] = {}


class VMError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[vm {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def image_key() -> str:
    return hashlib.sha256(BUILD_SCRIPT.read_bytes()).hexdigest()[:16]


def base_image() -> Path:
    """Directory holding base.raw, vmlinuz, initrd.img; built on first use, then cached."""
    out = CACHE_ROOT / image_key()
    if (out / "base.raw").is_file():
        return out
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    with open(CACHE_ROOT / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "base.raw").is_file():
            log(f"building base image {out} (debootstrap; a few minutes)")
            t0 = time.monotonic()
            subprocess.run(["bash", str(BUILD_SCRIPT), str(out)], check=True, stdout=subprocess.DEVNULL)
            timings["image_build_s"] = time.monotonic() - t0
            log(f"image built in {timings['image_build_s']:.0f} s")
    return out


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_key(workdir: Path) -> Path:
    key = workdir / "id_ed25519"
    if not key.exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vmbed", "-f", str(key)],
            check=True,
        )
    return key


def kvm_usable() -> bool:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    return True


Cmd = Union[str, "list[str]"]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Link:
    """A private L2 link between two guests: each one's second NIC sends its frames as UDP datagrams from its
    own loopback port to the other's (qemu ``-netdev socket,udp=…,localaddr=…``; no multicast, no host root,
    no start order). The ports are picked free at creation, so two beds on one machine do not collide."""

    def __init__(self) -> None:
        self.ports = (free_udp_port(), free_udp_port())
        while self.ports[1] == self.ports[0]:
            self.ports = (self.ports[0], free_udp_port())

    def side(self, index: int) -> tuple[int, int, str]:
        """(local port, remote port, MAC) of side 0 or 1; the guest's address is 10.77.0.<index + 1>."""
        return self.ports[index], self.ports[1 - index], f"52:54:00:77:00:{index + 1:02x}"


class VM:
    """One qemu guest. ``start()`` boots it and waits for ssh; ``ssh()`` runs commands as root."""

    def __init__(
        self, name: str, workdir: Path, key: Path, memory_mb: int = 2048, link: Optional[tuple[Link, int]] = None
    ) -> None:
        self.name = name
        self.link = link
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key = key
        self.memory_mb = memory_mb
        self.port = 0
        self.accel = ""
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.serial = self.dir / "serial.log"
        self._qemu_log: Optional[IO[bytes]] = None
        self.image = base_image()
        self.master = Master()  # connection sharing for ssh()/put(), from the end of each boot on

    # ---- disks and command line -------------------------------------------------------------
    def _make_disks(self) -> None:
        overlay = self.dir / "root.qcow2"
        data = self.dir / "data.qcow2"
        for path in (overlay, data):
            if path.exists():
                path.unlink()
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(self.image / "base.raw"), str(overlay)],
            check=True,
        )
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(data), "256M"], check=True)

    def _argv(self, accel: str) -> list[str]:
        pub = (self.key.with_suffix(".pub")).read_bytes().strip()
        cmdline = " ".join(
            [
                "root=/dev/vda",
                "rw",
                "console=ttyS0",
                "panic=-1",
                "net.ifnames=0",
                "mitigations=off",
                f"vmbed.sshkey={base64.b64encode(pub).decode()}",
            ]
        )
        half = self.memory_mb // 2
        cpu = "max" if accel == "tcg" else os.environ.get("VLLM_NODEAGENT_VM_KVM_CPU", "host,-arch-capabilities")
        return [
            "qemu-system-x86_64",
            "-name",
            self.name,
            "-machine",
            "q35",
            "-accel",
            accel,
            "-cpu",
            cpu,
            "-smp",
            "2,sockets=2,cores=1,threads=1",
            "-m",
            str(self.memory_mb),
            "-object",
            f"memory-backend-ram,id=m0,size={half}M",
            "-object",
            f"memory-backend-ram,id=m1,size={self.memory_mb - half}M",
            "-numa",
            "node,nodeid=0,cpus=0,memdev=m0",
            "-numa",
            "node,nodeid=1,cpus=1,memdev=m1",
            "-kernel",
            str(self.image / "vmlinuz"),
            "-initrd",
            str(self.image / "initrd.img"),
            "-append",
            cmdline,
            "-drive",
            f"file={self.dir / 'root.qcow2'},if=virtio,format=qcow2,cache=unsafe",
            "-drive",
            f"file={self.dir / 'data.qcow2'},if=virtio,format=qcow2,cache=unsafe",
            "-netdev",
            f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{self.port}-:22",
            "-device",
            "virtio-net-pci,netdev=n0",
            *self._link_argv(),
            "-device",
            "virtio-rng-pci",
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
            f"file:{self.serial}",
        ]

    def _link_argv(self) -> list[str]:
        if self.link is None:
            return []
        local, remote, mac = self.link[0].side(self.link[1])
        return [
            "-netdev",
            f"socket,id=n1,udp=127.0.0.1:{remote},localaddr=127.0.0.1:{local}",
            "-device",
            f"virtio-net-pci,netdev=n1,mac={mac}",
        ]

    # ---- lifecycle --------------------------------------------------------------------------
    def _launch(self, accel: str) -> None:
        self._make_disks()
        self.port = free_port()
        self.accel = accel
        if self.serial.exists():
            self.serial.rename(self.serial.with_suffix(f".{int(time.time())}.log"))
        self._qemu_log = open(self.dir / "qemu.log", "ab")  # noqa: SIM115 - lives as long as qemu
        log(f"{self.name}: booting ({accel}, ssh on 127.0.0.1:{self.port})")
        self.proc = subprocess.Popen(self._argv(accel), stdout=self._qemu_log, stderr=subprocess.STDOUT)

    def _kill(self) -> None:
        self.master.stop()
        if self.proc is not None:
            end_process(self.proc)
        self.proc = None
        if self._qemu_log is not None:
            self._qemu_log.close()
            self._qemu_log = None

    def serial_tail(self, chars: int = 6000) -> str:
        try:
            text = self.serial.read_text(errors="replace")
        except FileNotFoundError:
            return "(no serial log)"
        return text[-chars:]

    def _kernel_started(self, within: float) -> bool:
        """True once the serial console shows the kernel banner; False if it does not within ``within`` s."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if "Linux version" in self.serial_tail(10**6):
                return True
            if self.proc is None or self.proc.poll() is not None:
                return False
            time.sleep(1)
        return False

    def _boot(self, accel: str, timeout: float) -> bool:
        self._launch(accel)
        t0 = time.monotonic()
        try:
            if accel == "kvm" and not self._kernel_started(KVM_BANNER_TIMEOUT):
                raise VMError(f"no kernel banner on the serial console within {KVM_BANNER_TIMEOUT:.0f} s")
            self.wait_ssh(timeout)
        except VMError as exc:
            log(
                f"{self.name}: bring-up with {accel} failed: {exc}\n--- serial console ({self.serial}) ---\n"
                f"{self.serial_tail()}\n--- end of serial console ---"
            )
            self._kill()
            return False
        boot_s = time.monotonic() - t0
        timings.setdefault(f"boot_{accel}_s", boot_s)
        self._start_master()
        log(f"{self.name}: up in {boot_s:.0f} s ({accel})")
        return True

    def start(self) -> VM:
        global _accel_decided  # noqa: PLW0603 - one decision per test process
        want = os.environ.get("VLLM_NODEAGENT_VM_ACCEL", "auto")
        with _accel_lock:  # guests started from threads: one probe only
            if want == "auto" and _accel_decided is None:
                if kvm_usable() and self._boot("kvm", KVM_PROBE_TIMEOUT):
                    _accel_decided = "kvm"
                    return self
                _accel_decided = "tcg"
                log("KVM unusable or hung; using TCG from now on")
        accel = _accel_decided if want == "auto" else want
        assert accel is not None
        timeout = TCG_BOOT_TIMEOUT if accel == "tcg" else KVM_PROBE_TIMEOUT * 2
        for attempt in (1, 2):
            if self._boot(accel, timeout):
                return self
            log(f"{self.name}: attempt {attempt} failed")
        raise VMError(
            f"{self.name} did not come up with {accel} in two bounded attempts; "
            f"serial console: {self.serial}\n{self.serial_tail()}"
        )

    def stop(self) -> None:
        if os.environ.get("VLLM_NODEAGENT_VM_KEEP") == "1" and self.proc is not None:
            log(
                f"{self.name}: kept running (VLLM_NODEAGENT_VM_KEEP=1): ssh -i {self.key} -p {self.port} "
                f"root@127.0.0.1; qemu pid {self.proc.pid}"
            )
            return
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired, VMError):
                self.ssh("systemctl poweroff", timeout=15, check=False)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=30)
        self._kill()
        self.master.close()

    # ---- ssh ----------------------------------------------------------------------------------
    # Options shared by ssh and scp: a throwaway guest with a per-run key, never prompting.
    SSH_OPTIONS = (
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "BatchMode=yes",
    )

    def ssh_base(self, shared: bool = True) -> list[str]:
        """ssh to the guest as root; ``shared``: over the master connection when there is one (sshmux)."""
        return [*self._ssh_argv(), *(self.master.options() if shared else ()), "root@127.0.0.1"]

    def _ssh_argv(self) -> list[str]:
        return [
            "ssh",
            "-i",
            str(self.key),
            "-p",
            str(self.port),
            *self.SSH_OPTIONS,
            "-o",
            "ConnectTimeout=10",
            "-o",
            "ServerAliveInterval=10",
            "-o",
            "ServerAliveCountMax=6",
        ]

    def _start_master(self) -> None:
        if not self.master.start(self._ssh_argv(), "root@127.0.0.1"):
            log(f"{self.name}: no shared ssh connection; each call connects on its own")

    def ssh(
        self, cmd: Cmd, timeout: float = 300, check: bool = True, input_text: Optional[str] = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` in the guest as root: a list is quoted argv, a str is a shell script."""
        remote = cmd if isinstance(cmd, str) else shlex.join(cmd)
        if self.proc is None or self.proc.poll() is not None:
            raise VMError(f"{self.name}: qemu is not running")
        # No stdin of ours reaches the guest (CI runs without one; an interactive run must not block on it).
        t0 = time.monotonic()
        try:
            res = subprocess.run(
                [*self.ssh_base(), remote],
                capture_output=True,
                text=True,
                timeout=timeout,
                input=input_text if input_text is not None else "",
            )
        finally:  # what the bed spends in ssh (commands included), summed over all guests
            with _timings_lock:
                timings["ssh_calls_n"] = timings.get("ssh_calls_n", 0) + 1
                timings["ssh_total_s"] = timings.get("ssh_total_s", 0.0) + time.monotonic() - t0
        if check and res.returncode != 0:
            raise VMError(
                f"{self.name}: `{remote}` exited {res.returncode}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}"
            )
        return res

    def out(self, cmd: Cmd, timeout: float = 300) -> str:
        return self.ssh(cmd, timeout=timeout).stdout.strip()

    def put(self, local: Path, remote: str, mode: str = "0644") -> None:
        """Copy a file in (scp)."""
        subprocess.run(
            [
                "scp",
                "-q",
                "-i",
                str(self.key),
                "-P",
                str(self.port),
                *self.SSH_OPTIONS,
                *self.master.options(),
                str(local),
                f"root@127.0.0.1:{remote}",
            ],
            stdin=subprocess.DEVNULL,
            check=True,
            timeout=300,
        )
        self.ssh(["chmod", mode, remote])

    def write(self, remote: str, text: str, mode: str = "0644") -> None:
        self.ssh(f"umask 022; cat > {shlex.quote(remote)} && chmod {mode} {shlex.quote(remote)}", input_text=text)

    def wait_ssh(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise VMError(f"qemu exited (rc={None if self.proc is None else self.proc.returncode})")
            try:
                res = subprocess.run(
                    [*self.ssh_base(shared=False), "systemctl is-system-running --wait"],
                    capture_output=True,
                    text=True,
                    stdin=subprocess.DEVNULL,
                    timeout=max(5.0, deadline - time.monotonic()),
                )
                # "running" or "degraded": boot finished either way; ssh answered.
                if res.returncode in (0, 1) and res.stdout.strip() in ("running", "degraded"):
                    return
                last = (res.stdout + res.stderr).strip()
            except subprocess.TimeoutExpired:
                last = "ssh timed out"
            time.sleep(2)
        raise VMError(f"no ssh within {timeout:.0f} s (last: {last[-300:]})")

    def boot_id(self) -> str:
        return self.out("cat /proc/sys/kernel/random/boot_id")

    def reboot(self, timeout: float = TCG_BOOT_TIMEOUT) -> None:
        before = self.boot_id()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.ssh("systemctl reboot", timeout=30, check=False)
        self.master.stop()  # that boot's connection goes with it: never wait on it (its keep-alive takes a minute)
        deadline = time.monotonic() + timeout
        t0 = time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(3)
            try:
                res = self.ssh("cat /proc/sys/kernel/random/boot_id", timeout=20, check=False)
            except subprocess.TimeoutExpired:
                continue
            now = res.stdout.strip()
            if res.returncode == 0 and now and now != before:
                self.wait_ssh(max(30.0, deadline - time.monotonic()))
                timings.setdefault(f"reboot_{self.accel}_s", time.monotonic() - t0)
                self._start_master()
                return
        raise VMError(f"{self.name}: no new boot within {timeout:.0f} s\n{self.serial_tail()}")


def booted(workdir: Path, key: Path, name: str) -> Iterator[VM]:
    """A generator for fixtures: yields a started VM, stops it afterwards."""
    guest = VM(name, workdir, key)
    try:
        guest.start()
        yield guest
    finally:
        guest.stop()


def qemu_available() -> Optional[str]:
    """None when the bed can run here, else why not."""
    if os.geteuid() != 0:
        return "the VM test bed needs root (debootstrap, mkfs of a root filesystem)"
    for tool in ("qemu-system-x86_64", "qemu-img", "debootstrap", "mkfs.ext4", "ssh", "scp", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (.ci/vm.sh installs it)"
    return None
