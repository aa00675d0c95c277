"""What the NVML-backed GPU settings share: one GPU by PCI bus id, NVML's refusals as one line, rebuild params.

Power limit, application clocks and compute mode (issue 27) are each one module beside this one; persistence
mode (gpu.py) predates it. The journal keeps a GPU's index and PCI bus id; revert writes the journaled original
back through the same NVML call apply used, only where the live value is still what the agent wrote.
"""

from __future__ import annotations

import re
from typing import Callable, Optional

from vllm_nodeagent.host import Host
from vllm_nodeagent.nvml import Nvml, NvmlCallError
from vllm_nodeagent.settings.base import (
    BuildInputs,
    NotApplicable,
    Tunable,
    TunableError,
    ValueTunable,
    only_params,
    param,
)

_INDEX = re.compile(r"[0-9]{1,6}")
_PCI = re.compile(r"[0-9a-fA-F]{4,8}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]")


class NvmlTunable(ValueTunable):
    """One GPU's setting through NVML. Subclasses set ``setting`` and read/write through ``self.gpu()``."""

    setting = ""  # the id's last part: gpu.<index>.<setting>

    def __init__(self, nvml: Optional[Nvml], index: int, pci_bus_id: str, nvml_error: str = "") -> None:
        self.nvml = nvml
        self.index = index
        self.pci_bus_id = pci_bus_id
        self.nvml_error = nvml_error
        self.id = f"gpu.{index}.{self.setting}"

    def params(self) -> dict[str, str]:
        return {"pci_bus_id": self.pci_bus_id, "index": str(self.index)}

    def gpu(self) -> Nvml:
        if self.nvml is None:
            raise NotApplicable(f"NVML not usable: {self.nvml_error or 'not opened'}")
        return self.nvml

    def unreadable(self, exc: NvmlCallError) -> Exception:
        """A read that failed: "Not Supported" means this board (or vGPU) has no such setting, a skip."""
        if "Not Supported" in str(exc):
            return NotApplicable(f"GPU {self.index} ({self.pci_bus_id}): {exc}")
        return self.refused(exc)

    def refused(self, exc: NvmlCallError) -> TunableError:
        """NVML's answer as one line, naming the GPU; a MIG-enabled GPU is said so (it refuses most settings)."""
        mig = ""
        try:
            if self.nvml is not None and self.nvml.mig_enabled(self.pci_bus_id):
                mig = " (MIG is enabled on this GPU: disable it, nvidia-smi -mig 0, which needs a GPU reset)"
        except NvmlCallError:
            pass
        return TunableError(f"GPU {self.index} ({self.pci_bus_id}): {exc}{mig}")


def gpu_rebuild(
    cls: Callable[[Optional[Nvml], int, str], Tunable],
) -> Callable[[Host, Optional[Nvml], dict[str, str]], Tunable]:
    """A family's ``rebuild``: the journaled index and bus id, checked, and nothing else."""

    def rebuild(host: Host, nvml: Optional[Nvml], params: dict[str, str]) -> Tunable:
        only_params(params, "index", "pci_bus_id")
        return cls(nvml, int(param(params, "index", _INDEX)), param(params, "pci_bus_id", _PCI))

    return rebuild


def each_gpu(inputs: BuildInputs, make: Callable[[Optional[Nvml], int, str, str], Tunable]) -> list[Tunable]:
    return [make(inputs.nvml, g.index, g.pci_bus_id, inputs.nvml_error) for g in inputs.topology.gpus]
