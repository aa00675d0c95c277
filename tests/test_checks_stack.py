"""Readiness checks 7 (driver/CUDA stack) and 3 (NVSwitch fabric) on fake trees and the NVML double."""

from __future__ import annotations

import os

from checkhelp import probe, results, user
from fakehost import FakeHost
from nvml_double import NvmlDouble

from vllm_nodeagent.checks.fabric import fm_version
from vllm_nodeagent.checks.stack import libcuda_paths, parse_torch_cuda

VENV = "[vllm]\nmodel = 'm'\nuser = 'vllm'\npython = '/opt/vllm/bin/python3'\n"
MODULES = "nvidia_uvm 1527808 0 - Live 0x0\nnvidia 11 2 nvidia_uvm, Live 0x0\n"


def stack(h: FakeHost, nvml: NvmlDouble, cfg: str = VENV) -> dict:
    return results(probe(h, cfg, nvml), "stack")


def good_host(h: FakeHost) -> None:
    h.write("/proc/modules", MODULES)
    uvm = h.root / "dev/nvidia-uvm"
    uvm.parent.mkdir(parents=True, exist_ok=True)
    os.mknod(uvm, 0o666 | 0o020000, os.makedev(511, 0))  # a character device, as udev makes it
    os.chmod(uvm, 0o666)  # noqa: S103 - past the umask: the mode udev gives /dev/nvidia-uvm
    h.write(
        "/opt/vllm/lib/python3.11/site-packages/torch/version.py",
        "__version__ = '2.11.0+cu130'\ndebug = False\ncuda: Optional[str] = '13.0'\n",
    )
    (h.root / "etc").mkdir(exist_ok=True)
    (h.root / "etc/ld.so.cache").write_bytes(
        b"glibc-ld.so.cache1.1\0libcuda.so.1\0/usr/lib/x86_64-linux-gnu/libcuda.so.1\0libc.so.6\0"
    )
    user(h, uid=998)


def test_a_good_stack_passes(hgx: FakeHost, hgx_nvml: NvmlDouble) -> None:
    good_host(hgx)
    got = stack(hgx, hgx_nvml)
    assert {k: r.status for k, r in got.items()} == {
        "stack.cuda_version": "pass",
        "stack.nouveau": "pass",
        "stack.nvidia_uvm": "pass",
        "stack.libcuda": "pass",
    }
    assert got["stack.cuda_version"].current == "driver CUDA 13.0, torch built for CUDA 13.0"


def test_old_driver_for_the_wheel_fails(hgx: FakeHost, hgx_nvml: NvmlDouble) -> None:
    good_host(hgx)
    hgx_nvml.rec["cuda_driver_version"] = 12080
    r = stack(hgx, hgx_nvml)["stack.cuda_version"]
    assert r.status == "fail" and r.current == "driver CUDA 12.8, torch built for CUDA 13.0"
    hgx_nvml.rec["cuda_driver_version"] = 13000
    hgx.write("/opt/vllm/lib/python3.11/site-packages/torch/version.py", "cuda = '13.1'\n")
    assert stack(hgx, hgx_nvml)["stack.cuda_version"].status == "warn"  # minor-version compatibility


def test_cuda_version_skips_without_a_known_venv_or_a_cuda_torch(hgx: FakeHost, hgx_nvml: NvmlDouble) -> None:
    good_host(hgx)
    assert stack(hgx, hgx_nvml, "")["stack.cuda_version"].status == "skip"
    hgx.write("/opt/vllm/lib/python3.11/site-packages/torch/version.py", "cuda: Optional[str] = None\n")
    r = stack(hgx, hgx_nvml)["stack.cuda_version"]
    assert r.status == "skip" and "CPU build" in r.detail
    assert parse_torch_cuda("cuda = '12.8'\n") == (12, 8)


def test_nouveau_uvm_and_device_access(hgx: FakeHost, hgx_nvml: NvmlDouble) -> None:
    good_host(hgx)
    hgx.write("/proc/modules", "nouveau 2 0 - Live 0x0\n")
    got = stack(hgx, hgx_nvml)
    assert got["stack.nouveau"].status == "fail"
    assert got["stack.nvidia_uvm"].status == "fail" and got["stack.nvidia_uvm"].current == "nvidia_uvm not loaded"
    hgx.write("/proc/modules", MODULES)
    os.chmod(hgx.root / "dev/nvidia-uvm", 0o660)  # root:root 0660: the service user is locked out
    r = stack(hgx, hgx_nvml)["stack.nvidia_uvm"]
    assert r.status == "fail" and r.current == "/dev/nvidia-uvm mode 660 denies vllm"
    os.chown(hgx.root / "dev/nvidia-uvm", 0, 44)  # group video, which vllm is in
    assert stack(hgx, hgx_nvml)["stack.nvidia_uvm"].status == "pass"


def test_two_libcudas_warn() -> None:
    data = (
        b"libcuda.so.1\0/usr/lib/x86_64-linux-gnu/libcuda.so.1\0libcuda.so.1\0"
        b"/usr/local/cuda-12.8/compat/libcuda.so.1\0/usr/lib/x86_64-linux-gnu/libcuda.so.1\0"
    )
    assert libcuda_paths(data) == ["/usr/lib/x86_64-linux-gnu/libcuda.so.1", "/usr/local/cuda-12.8/compat/libcuda.so.1"]


def test_copies_of_one_build_pass_two_builds_warn(hgx: FakeHost, hgx_nvml: NvmlDouble) -> None:
    """The lent H100 has 580.159.04's libcuda in /lib and /usr/local/nvidia/lib64: not a stale driver."""
    good_host(hgx)
    (hgx.root / "etc/ld.so.cache").write_bytes(
        b"glibc-ld.so.cache1.1\0libcuda.so.1\0/lib/libcuda.so.1\0libcuda.so.1\0/usr/local/nvidia/lib64/libcuda.so.1\0"
    )
    for d in ("lib", "usr/local/nvidia/lib64"):
        (hgx.root / d).mkdir(parents=True, exist_ok=True)
        (hgx.root / d / "libcuda.so.580.159.04").write_bytes(b"\x7fELF")
        (hgx.root / d / "libcuda.so.1").symlink_to("libcuda.so.580.159.04")
    r = stack(hgx, hgx_nvml)["stack.libcuda"]
    assert r.status == "pass" and r.current == "2 copies of libcuda.so.580.159.04", r
    (hgx.root / "lib/libcuda.so.550.54.15").write_bytes(b"\x7fELF")  # an old driver's library left behind
    (hgx.root / "lib/libcuda.so.1").unlink()
    (hgx.root / "lib/libcuda.so.1").symlink_to("libcuda.so.550.54.15")
    r = stack(hgx, hgx_nvml)["stack.libcuda"]
    assert r.status == "warn" and "550.54.15" in str(r.current) and "580.159.04" in str(r.current), r


def test_no_gpu_no_stack_checks(tmp_path: object) -> None:
    from pathlib import Path

    from fakehost import vm_no_gpu

    assert results(probe(vm_no_gpu(Path(str(tmp_path)) / "vm")), "stack") == {}


# --- 3: fabric ---------------------------------------------------------------------------------------------
DPKG = (
    "Package: nvidia-fabricmanager-580\nStatus: install ok installed\nArchitecture: amd64\n"
    "Version: 580.159.04-1\n\nPackage: zlib1g\nStatus: install ok installed\nVersion: 1:1.2.13\n"
)


def test_fabric_completed_with_a_matching_manager_passes(hgx: FakeHost, hgx_nvml: NvmlDouble) -> None:
    hgx.write("/var/lib/dpkg/status", DPKG)
    hgx.write("/proc/1500/comm", "nv-fabricmanage")  # comm is cut to 15 characters
    got = results(probe(hgx, "", hgx_nvml), "fabric")
    assert got["fabric.state"].status == "pass" and got["fabric.state"].current == "8 GPU(s) completed"
    assert got["fabric.manager"].status == "pass"
    assert got["fabric.manager"].current == "nv-fabricmanager pid 1500, version 580.159.04"


def test_fabric_not_started_and_version_mismatch_fail(hgx: FakeHost, hgx_nvml: NvmlDouble) -> None:
    for d in hgx_nvml.rec["devices"]:
        d["fabric"] = [1, 0]
    got = results(probe(hgx, "", hgx_nvml), "fabric")
    assert got["fabric.state"].status == "fail" and "error 802" in got["fabric.state"].detail
    assert got["fabric.manager"].status == "fail"  # not running
    hgx.write("/var/lib/dpkg/status", DPKG.replace("580.159.04-1", "580.95.05-1"))
    hgx.write("/proc/1500/comm", "nv-fabricmanage")
    r = results(probe(hgx, "", hgx_nvml), "fabric")["fabric.manager"]
    assert r.status == "fail" and "580.159.04" in r.hint
    assert fm_version(probe(hgx)) == "580.95.05"


def test_pcie_boards_skip_fabric(hgx: FakeHost, hgx_nvml: NvmlDouble) -> None:
    for d in hgx_nvml.rec["devices"]:
        d["fabric"] = [0, 0]
    assert [r.status for r in results(probe(hgx, "", hgx_nvml), "fabric").values()] == ["skip"]
    for d in hgx_nvml.rec["devices"]:
        d.pop("fabric")  # an older driver: Not Supported
    assert [r.status for r in results(probe(hgx, "", hgx_nvml), "fabric").values()] == ["skip"]
