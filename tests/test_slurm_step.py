"""vLLM as a Slurm job step: the plan uses the step's GPUs (SLURM_STEP_GPUS / SLURM_JOB_GPUS / CUDA_VISIBLE_DEVICES
as Slurm sets them), refuses GPUs outside them, and names GPUs by UUID when Slurm's device cgroup renumbers them.
The CPUs come from the step's cpuset (tests/test_topology_classes.py, and a real Slurm in test_slurm_real.py)."""

from __future__ import annotations

import pytest
from test_launcher import NUMACTL, WHO, cfg, two_socket

from vllm_nodeagent.serving.env import LaunchError
from vllm_nodeagent.serving.plan import plan
from vllm_nodeagent.topology import Topology

JOB = {"SLURM_JOB_ID": "42", "SLURM_STEP_ID": "0", "PATH": "/usr/bin"}


def with_uuids(topo: Topology) -> Topology:
    from dataclasses import replace

    return replace(topo, gpus=[replace(g, uuid=f"GPU-{g.index:04d}") for g in topo.gpus])


def test_step_gpus_decide_and_bind() -> None:
    env = {**JOB, "SLURM_STEP_GPUS": "2,3", "CUDA_VISIBLE_DEVICES": "0,1"}  # ConstrainDevices renumbered
    p = plan(cfg(), two_socket(), run_as=WHO, numactl=NUMACTL, source_env=env)
    assert p.gpus == [2, 3] and p.numa_nodes == [1] and p.cpus == list(range(8, 16))
    assert p.env["CUDA_VISIBLE_DEVICES"] == "2,3"  # no UUIDs known (sysfs-only topology): the indices
    assert any("SLURM_STEP_GPUS=2,3" in n for n in p.notes)


def test_step_gpus_by_uuid_when_known() -> None:
    env = {**JOB, "SLURM_STEP_GPUS": "1", "CUDA_VISIBLE_DEVICES": "0"}
    p = plan(cfg(), with_uuids(two_socket()), run_as=WHO, numactl=NUMACTL, source_env=env)
    assert p.gpus == [1] and p.env["CUDA_VISIBLE_DEVICES"] == "GPU-0001"


def test_gpu_outside_the_step_is_refused() -> None:
    env = {**JOB, "SLURM_JOB_GPUS": "0,1"}
    with pytest.raises(LaunchError, match=r"GPU 3 is not one of this Slurm step's GPUs \(SLURM_JOB_GPUS=0,1\)"):
        plan(cfg(gpus=[3]), two_socket(), run_as=WHO, numactl=NUMACTL, source_env=env)
    p = plan(cfg(gpus=[1]), two_socket(), run_as=WHO, numactl=NUMACTL, source_env=env)
    assert p.gpus == [1]


def test_cuda_visible_devices_alone() -> None:
    topo = with_uuids(two_socket())
    p = plan(cfg(), topo, run_as=WHO, numactl=NUMACTL, source_env={**JOB, "CUDA_VISIBLE_DEVICES": "GPU-0003,GPU-0002"})
    assert p.gpus == [3, 2]
    p = plan(cfg(), topo, run_as=WHO, numactl=NUMACTL, source_env={**JOB, "CUDA_VISIBLE_DEVICES": "0"})
    assert p.gpus == [0]
    with pytest.raises(LaunchError, match="CUDA_VISIBLE_DEVICES=GPU-9999: GPU-9999 is not a GPU of this node"):
        plan(cfg(), topo, run_as=WHO, numactl=NUMACTL, source_env={**JOB, "CUDA_VISIBLE_DEVICES": "GPU-9999"})


def test_bad_or_foreign_slurm_values_are_one_line() -> None:
    with pytest.raises(LaunchError, match=r"SLURM_STEP_GPUS=gpu0: expected GPU indices"):
        plan(cfg(), two_socket(), run_as=WHO, numactl=NUMACTL, source_env={**JOB, "SLURM_STEP_GPUS": "gpu0"})
    with pytest.raises(LaunchError, match=r"SLURM_STEP_GPUS=7: GPU 7 is not a GPU of this node \(GPUs here: 0,1,2,3\)"):
        plan(cfg(), two_socket(), run_as=WHO, numactl=NUMACTL, source_env={**JOB, "SLURM_STEP_GPUS": "7"})


def test_outside_slurm_nothing_changes() -> None:
    p = plan(cfg(), two_socket(), run_as=WHO, numactl=NUMACTL, source_env={"CUDA_VISIBLE_DEVICES": "1", "PATH": "/x"})
    assert p.gpus == [0, 1, 2, 3]  # a stray CUDA_VISIBLE_DEVICES outside Slurm is not a step's GPU set
