"""[gpu] compute_mode = "default": every GPU in NVML's Default compute mode (nvidia-smi -c DEFAULT).

vLLM runs one process per GPU but also probes and profiles from others (and a restart overlaps the old
workers' exit): Exclusive_Process makes those fail with "all CUDA-capable devices are busy", Prohibited allows
no CUDA context at all. The mode lasts until the driver unloads. Replaces the doctor-only compute mode check
when configured (checks/gpu.py reports it only for GPUs this setting does not manage).
"""

from __future__ import annotations

from typing import Optional

from vllm_nodeagent.nvml import Nvml, NvmlCallError
from vllm_nodeagent.settings.base import BuildInputs, Family, Tunable, TunableError
from vllm_nodeagent.settings.gpu_nvml import NvmlTunable, each_gpu, gpu_rebuild

# nvml.h nvmlComputeMode_t, named as nvidia-smi names them
COMPUTE_MODES = {0: "Default", 1: "Exclusive_Thread", 2: "Prohibited", 3: "Exclusive_Process"}
_BY_NAME = {v: k for k, v in COMPUTE_MODES.items()}


class ComputeMode(NvmlTunable):
    family = "gpu_compute_mode"
    setting = "compute_mode"

    def __init__(
        self, nvml: Optional[Nvml], index: int, pci_bus_id: str, want: str = "default", nvml_error: str = ""
    ) -> None:
        super().__init__(nvml, index, pci_bus_id, nvml_error)
        self._desired = "Default" if want == "default" else want

    def read(self) -> str:
        try:
            mode = self.gpu().compute_mode(self.pci_bus_id)
        except NvmlCallError as exc:
            raise self.unreadable(exc) from None
        return COMPUTE_MODES.get(mode, str(mode))

    def write(self, value: str) -> None:
        mode = _BY_NAME.get(value)
        if mode is None:
            raise TunableError(f"not a compute mode: {value[:40]!r} (one of {', '.join(_BY_NAME)})")
        try:
            self.gpu().set_compute_mode(self.pci_bus_id, mode)
        except NvmlCallError as exc:
            raise self.refused(exc) from None

    def hint(self) -> str:
        return f"vllm-nodeagent apply --only {self.id}  (or: nvidia-smi -i {self.pci_bus_id} -c DEFAULT)"


def build(inputs: BuildInputs) -> list[Tunable]:
    gpu = inputs.config.gpu
    if gpu is None or gpu.compute_mode is None:
        return []
    want = gpu.compute_mode
    return each_gpu(inputs, lambda nvml, i, bus, err: ComputeMode(nvml, i, bus, want, err))


FAMILY = Family(ComputeMode.family, build, gpu_rebuild(ComputeMode))
