"""[gpu] clocks: each GPU's application clocks through NVML ("max", "default" or { graphics, memory } MHz).

The tutorial's `nvidia-smi -ac <memory>,<graphics>`: the clocks a GPU runs CUDA work at when nothing (power,
heat) holds it lower. A GPU left with application clocks below the top by an earlier job serves slower.

Why application clocks and not locked clocks (nvmlDeviceSetGpuLockedClocks, `nvidia-smi -lgc`): NVML has no
getter for locked clocks (tests/gpu/h200-2026-12-02 recorded every clock query an H200 answers), so apply could
not read back what it wrote, drift could not see a change and revert could not tell whether the live value is
still the agent's. Application clocks read back exactly (nvmlDeviceGetApplicationsClock). Locks set by someone
else are still seen: doctor's gpu.clocks check reports the "Applications Clocks Setting" clocks event reason.
"""

from __future__ import annotations

import re
from typing import Optional, Union

from vllm_nodeagent.config_gpu import ClockPair
from vllm_nodeagent.nvml import Nvml, NvmlCallError
from vllm_nodeagent.settings.base import BuildInputs, Family, Tunable, TunableError
from vllm_nodeagent.settings.gpu_nvml import NvmlTunable, each_gpu, gpu_rebuild

_VALUE = re.compile(r"graphics=([0-9]{1,6}) memory=([0-9]{1,6})")


def show(graphics: int, memory: int) -> str:
    return f"graphics={graphics} memory={memory}"


def parse(value: str) -> tuple[int, int]:
    """(graphics, memory) from ``show``'s form (what read and the journal hold); TunableError otherwise."""
    m = _VALUE.fullmatch(" ".join(value.split()))
    if not m:
        raise TunableError(f"not application clocks: {value[:60]!r} (expected 'graphics=MHz memory=MHz')")
    return int(m.group(1)), int(m.group(2))


def top(supported: dict[int, list[int]]) -> tuple[int, int]:
    """The highest memory clock and the highest graphics clock supported with it."""
    memory = max(supported)
    return max(supported[memory]), memory


class Clocks(NvmlTunable):
    family = "gpu_clocks"
    setting = "clocks"

    def __init__(
        self,
        nvml: Optional[Nvml],
        index: int,
        pci_bus_id: str,
        want: Union[str, ClockPair] = "default",
        nvml_error: str = "",
    ) -> None:
        super().__init__(nvml, index, pci_bus_id, nvml_error)
        self.want = want
        self.supported: dict[int, list[int]] = {}
        self.defaults: Optional[tuple[int, int]] = None
        self._desired = want if isinstance(want, str) else show(want.graphics, want.memory)

    def read(self) -> str:
        nvml = self.gpu()
        try:
            graphics, memory = nvml.applications_clocks(self.pci_bus_id)
            if self.want == "default":
                self.defaults = nvml.applications_clocks(self.pci_bus_id, default=True)
            self.supported = nvml.supported_clocks(self.pci_bus_id) if self.want != "default" else {}
        except NvmlCallError as exc:
            raise self.unreadable(exc) from None
        return show(graphics, memory)

    def wanted(self) -> Optional[tuple[int, int]]:
        if isinstance(self.want, ClockPair):
            return self.want.graphics, self.want.memory
        if self.want == "max":
            return top(self.supported) if self.supported else None
        return self.defaults

    def compliant(self, current: str) -> bool:
        return parse(current) == self.wanted()

    def target(self, current: str) -> str:
        want = self.wanted()
        if want is None:
            raise TunableError(f"GPU {self.index}: supported clocks not read")
        return show(*want)

    def invalid(self, current: str) -> str:
        if self.want == "max" and not self.supported:
            return f"GPU {self.index} reports no supported clocks (nvmlDeviceGetSupportedMemoryClocks)"
        if not isinstance(self.want, ClockPair) or not self.supported:
            return ""
        g, m = self.want.graphics, self.want.memory
        if m not in self.supported:
            offered = ", ".join(str(x) for x in sorted(self.supported, reverse=True))
            return f"memory {m} MHz is not supported by GPU {self.index} (supported: {offered} MHz)"
        if g not in self.supported[m]:
            gs = self.supported[m]
            return (
                f"graphics {g} MHz is not supported by GPU {self.index} with memory {m} MHz "
                f"(supported: {min(gs)} to {max(gs)} MHz in its steps; nvidia-smi -q -d SUPPORTED_CLOCKS)"
            )
        return ""

    def write(self, value: str) -> None:
        graphics, memory = parse(value)
        try:
            if self.want == "default" and self.defaults == (graphics, memory):
                self.gpu().reset_applications_clocks(self.pci_bus_id)  # "default" is the driver's reset
            else:
                self.gpu().set_applications_clocks(self.pci_bus_id, graphics, memory)
        except NvmlCallError as exc:
            raise self.refused(exc) from None

    def note(self, current: str) -> str:
        if self.want == "max" and self.supported:
            return f"top supported: {show(*top(self.supported))}"
        return ""

    def hint(self) -> str:
        want = self.wanted()
        ac = f"-ac {want[1]},{want[0]}" if want and self.want != "default" else "-rac"
        return f"vllm-nodeagent apply --only {self.id}  (or: nvidia-smi -i {self.pci_bus_id} {ac})"


def build(inputs: BuildInputs) -> list[Tunable]:
    gpu = inputs.config.gpu
    if gpu is None or gpu.clocks is None:
        return []
    want = gpu.clocks
    return each_gpu(inputs, lambda nvml, i, bus, err: Clocks(nvml, i, bus, want, err))


FAMILY = Family(Clocks.family, build, gpu_rebuild(Clocks))
