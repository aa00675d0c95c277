from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

import pytest
from hypothesis import settings as hypothesis_settings

sys.path.insert(0, str(Path(__file__).parent))

from fakehost import (
    FakeHost,
    cgroup2_dev_cgroup,
    cgroup_v1_proc_cpuset,
    cpumap_only,
    gh200_like,
    legacy_cpuset_fs,
    memory_node_not_in_mems_allowed,
    no_pci_locality,
    nvml_absent_8gpu,
    offline_cpus_with_cxl,
    per_cpu_offline,
    same_cpumap_numa,
    slurm_cgroup_v2_job,
    slurm_own_hierarchy,
    step_on_one_node,
    trailing_nul_arm64,
    two_socket_8gpu,
    vm_no_gpu,
    workstation,
)
from nvml_double import NvmlDouble, hgx_8gpu_recording

from vllm_nodeagent.nvml import Nvml

HOSTS: dict[str, Callable[[Path], FakeHost]] = {
    "two_socket_8gpu": two_socket_8gpu,
    "workstation": workstation,
    "vm_no_gpu": vm_no_gpu,
    "nvml_absent_8gpu": nvml_absent_8gpu,
    # shaped like the real machines of issue #14
    "slurm_cgroup_v2_job": slurm_cgroup_v2_job,
    "offline_cpus_with_cxl": offline_cpus_with_cxl,
    "cpumap_only": cpumap_only,
    "gh200_like": gh200_like,
    "no_pci_locality": no_pci_locality,
    "trailing_nul_arm64": trailing_nul_arm64,
    # the classes of issue 24: cpusets outside /sys/fs/cgroup, per-CPU offline, buggy NUMA, late memory nodes
    "legacy_cpuset_fs": legacy_cpuset_fs,
    "cgroup_v1_proc_cpuset": cgroup_v1_proc_cpuset,
    "slurm_own_hierarchy": slurm_own_hierarchy,
    "cgroup2_dev_cgroup": cgroup2_dev_cgroup,
    "per_cpu_offline": per_cpu_offline,
    "same_cpumap_numa": same_cpumap_numa,
    "memory_node_not_in_mems_allowed": memory_node_not_in_mems_allowed,
    "step_on_one_node": step_on_one_node,  # found by the VM bed's Slurm test
}

# No timed assertions (charter): hypothesis's default 200 ms per-example deadline failed on a loaded 2-core VM.
hypothesis_settings.register_profile("no-deadline", deadline=None)
hypothesis_settings.load_profile("no-deadline")


@pytest.fixture
def hgx(tmp_path: Path) -> FakeHost:
    return two_socket_8gpu(tmp_path / "root")


@pytest.fixture
def hgx_nvml() -> NvmlDouble:
    return NvmlDouble(hgx_8gpu_recording())


def opener_for(double: NvmlDouble) -> Callable[[], Nvml]:
    return lambda: Nvml.open(lambda: double)


def unavailable_opener() -> Nvml:
    return Nvml.open(lambda: NvmlDouble({"devices": []}, fail_init="Driver Not Loaded"))


requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root on a real kernel")
