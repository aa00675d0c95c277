"""NVIDIA persistence mode, per GPU, through NVML. nvidia-persistenced, when running, owns it."""

from __future__ import annotations

import re
from typing import Optional

from vllm_nodeagent.host import Host
from vllm_nodeagent.nvml import Nvml, NvmlCallError
from vllm_nodeagent.settings.base import (
    BuildInputs,
    Family,
    NotApplicable,
    Tunable,
    TunableError,
    ValueTunable,
    only_params,
    param,
)

ON, OFF = "enabled", "disabled"


def running_process(host: Host, comm: str) -> Optional[int]:
    """PID of a process whose /proc/<pid>/comm is ``comm``, or None."""
    from vllm_nodeagent.host.proc import Procfs

    return next((pid for pid, c in Procfs(host).comms().items() if c == comm), None)


class PersistenceMode(ValueTunable):
    family = "gpu"

    def __init__(
        self, host: Host, nvml: Optional[Nvml], index: int, pci_bus_id: str, desired: bool = True, nvml_error: str = ""
    ) -> None:
        self.host = host
        self.nvml = nvml
        self.id = f"gpu.{index}.persistence_mode"
        self.index = index
        self.pci_bus_id = pci_bus_id
        self._desired = ON if desired else OFF
        self.nvml_error = nvml_error
        pid = running_process(host, "nvidia-persistenced")
        # The daemon keeps the driver loaded its own way; writing through NVML would fight it.
        self.owner: Optional[str] = f"nvidia-persistenced (pid {pid})" if pid else None

    def params(self) -> dict[str, str]:
        return {"pci_bus_id": self.pci_bus_id, "index": str(self.index)}

    def read(self) -> str:
        if self.nvml is None:
            raise NotApplicable(f"NVML not usable: {self.nvml_error or 'not opened'}")
        try:
            return ON if self.nvml.persistence_mode(self.pci_bus_id) else OFF
        except NvmlCallError as exc:
            raise TunableError(f"{self.pci_bus_id}: {exc}") from None

    def write(self, value: str) -> None:
        if self.nvml is None:
            raise TunableError("NVML not usable")
        try:
            self.nvml.set_persistence_mode(self.pci_bus_id, value == ON)
        except NvmlCallError as exc:
            raise TunableError(f"{self.pci_bus_id}: {exc}") from None

    def hint(self) -> str:
        if self.owner:
            return "owned by nvidia-persistenced: enable it there"
        return f"by hand: nvidia-smi -i {self.pci_bus_id} -pm 1"

    def fix_argv(self) -> tuple[str, ...]:
        return ("systemctl", "enable", "--now", "nvidia-persistenced") if self.owner else ()

    def note(self, current: str) -> str:
        # Who keeps the driver loaded matters when it is off: persistenced, or a direct NVML setting.
        return f"owner: {self.owner}" if self.owner else "owner: NVML (no nvidia-persistenced running)"


def build(inputs: BuildInputs) -> list[Tunable]:
    gpu = inputs.config.gpu
    if gpu is None or gpu.persistence_mode is None:
        return []
    return [
        PersistenceMode(inputs.host, inputs.nvml, g.index, g.pci_bus_id, gpu.persistence_mode, inputs.nvml_error)
        for g in inputs.topology.gpus
    ]


_INDEX = re.compile(r"[0-9]{1,6}")
_PCI = re.compile(r"[0-9a-fA-F]{4,8}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]")


def rebuild(host: Host, nvml: Optional[Nvml], params: dict[str, str]) -> Tunable:
    only_params(params, "index", "pci_bus_id")
    return PersistenceMode(host, nvml, int(param(params, "index", _INDEX)), param(params, "pci_bus_id", _PCI))


FAMILY = Family(PersistenceMode.family, build, rebuild)
