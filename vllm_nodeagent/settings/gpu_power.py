"""[gpu] power_limit: each GPU's power limit through NVML ("max", "default" or watts).

A cloud or shared GPU often comes with a limit below its default, left by an earlier job or a provider: the GPU
then clocks down under load (clocks event reason SW Power Cap). NVML answers in milliwatts; the value shown and
journaled is watts, exact to the milliwatt ("700 W", "612.5 W"), so revert writes back exactly what was there.
A limit set through NVML lasts until the driver unloads (a reboot, or no persistence mode and no client).
"""

from __future__ import annotations

from typing import Optional

from vllm_nodeagent.nvml import Nvml, NvmlCallError, PowerLimits
from vllm_nodeagent.settings.base import BuildInputs, Family, Tunable, TunableError
from vllm_nodeagent.settings.gpu_nvml import NvmlTunable, each_gpu, gpu_rebuild


def watts(milliwatts: int) -> str:
    if milliwatts % 1000 == 0:
        return f"{milliwatts // 1000} W"
    return f"{milliwatts / 1000:.3f}".rstrip("0") + " W"


def milliwatts(text: str) -> int:
    """ "700 W" (what read and the journal hold) -> 700000; TunableError on anything else."""
    number = text.strip().removesuffix("W").strip()
    try:
        value = round(float(number) * 1000)
    except (ValueError, OverflowError):  # "nan", "inf": a journal is input
        raise TunableError(f"not a power limit: {text[:40]!r}") from None
    if value <= 0:
        raise TunableError(f"not a power limit: {text[:40]!r}")
    return value


class PowerLimit(NvmlTunable):
    family = "gpu_power_limit"
    setting = "power_limit"

    def __init__(
        self, nvml: Optional[Nvml], index: int, pci_bus_id: str, want: str = "default", nvml_error: str = ""
    ) -> None:
        super().__init__(nvml, index, pci_bus_id, nvml_error)
        self.want = want  # "max" | "default" | watts as config.py normalised them
        self.limits: Optional[PowerLimits] = None
        self._desired = want if want in ("max", "default") else f"{want} W"

    def read(self) -> str:
        try:
            self.limits = self.gpu().power_limits(self.pci_bus_id)
        except NvmlCallError as exc:
            raise self.unreadable(exc) from None
        return watts(self.limits.current)

    def target_mw(self) -> Optional[int]:
        if self.want == "max":
            return self.limits.maximum if self.limits else None
        if self.want == "default":
            return self.limits.default if self.limits else None
        return round(float(self.want) * 1000)

    def compliant(self, current: str) -> bool:
        return milliwatts(current) == self.target_mw()

    def target(self, current: str) -> str:
        mw = self.target_mw()
        if mw is None:
            raise TunableError(f"GPU {self.index}: power limits not read")
        return watts(mw)

    def invalid(self, current: str) -> str:
        lim, mw = self.limits, self.target_mw()
        if lim is None or mw is None or lim.minimum <= mw <= lim.maximum:
            return ""
        return (
            f"{watts(mw)} is outside GPU {self.index}'s power limit range {watts(lim.minimum)} to "
            f"{watts(lim.maximum)} (nvmlDeviceGetPowerManagementLimitConstraints): set [gpu] power_limit inside it"
        )

    def write(self, value: str) -> None:
        try:
            self.gpu().set_power_limit(self.pci_bus_id, milliwatts(value))
        except NvmlCallError as exc:
            raise self.refused(exc) from None

    def note(self, current: str) -> str:
        lim = self.limits
        if lim is None:
            return ""
        return f"default {watts(lim.default)}, range {watts(lim.minimum)} to {watts(lim.maximum)}"

    def hint(self) -> str:
        mw = self.target_mw()
        pl = f" -pl {watts(mw).removesuffix(' W')}" if mw is not None else " -pl <watts>"
        return f"vllm-nodeagent apply --only {self.id}  (or: nvidia-smi -i {self.pci_bus_id}{pl})"


def build(inputs: BuildInputs) -> list[Tunable]:
    gpu = inputs.config.gpu
    if gpu is None or gpu.power_limit is None:
        return []
    want = gpu.power_limit
    return each_gpu(inputs, lambda nvml, i, bus, err: PowerLimit(nvml, i, bus, want, err))


FAMILY = Family(PowerLimit.family, build, gpu_rebuild(PowerLimit))
