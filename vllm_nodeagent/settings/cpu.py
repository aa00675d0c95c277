"""CPU frequency governor on every cpufreq policy."""

from __future__ import annotations

import re

from vllm_nodeagent.host import Host
from vllm_nodeagent.settings.base import (
    MAX_MEMBERS,
    BuildInputs,
    Family,
    MultiFileTunable,
    NotApplicable,
    Tunable,
    TunableError,
)

CPUFREQ_DIR = "/sys/devices/system/cpu/cpufreq"


def governor_paths(host: Host) -> dict[str, str]:
    return {
        p.rsplit("/", 1)[1]: f"{p}/scaling_governor"
        for p in host.glob(CPUFREQ_DIR, "policy*")
        if host.exists(f"{p}/scaling_governor")
    }


class CpuGovernor(MultiFileTunable):
    family = "cpu"

    def __init__(self, host: Host, desired: str = "", paths: dict[str, str] | None = None) -> None:
        super().__init__(host, "cpu.governor", governor_paths(host) if paths is None else paths, desired)

    def read(self) -> str:
        if not self.paths:
            raise NotApplicable("no cpufreq policies (typical in VMs): the hypervisor owns frequency")
        available = self.host.read_or(
            next(iter(self.paths.values())).replace("scaling_governor", "scaling_available_governors")
        )
        if available is not None and self._desired and self._desired not in available.split():
            raise TunableError(
                f"this host offers the governors {', '.join(available.split())}, not {self._desired!r}: "
                "set [cpu] governor to one of them"
            )
        return super().read()

    def hint(self) -> str:
        return f"by hand: cpupower frequency-set -g {self._desired}"


def build(inputs: BuildInputs) -> list[Tunable]:
    cpu = inputs.config.cpu
    if cpu is None or cpu.governor is None:
        return []
    return [CpuGovernor(inputs.host, cpu.governor)]


_POLICY = re.compile(r"policy[0-9]{1,5}")


def rebuild(host: Host, nvml: object, params: dict[str, str]) -> Tunable:
    """params: policy name -> its scaling_governor path (checked: nothing outside cpufreq)."""
    if len(params) > MAX_MEMBERS:
        raise ValueError(f"{len(params)} policies, more than the {MAX_MEMBERS} a setting manages")
    for name, path in params.items():
        if not _POLICY.fullmatch(name) or path != f"{CPUFREQ_DIR}/{name}/scaling_governor":
            raise ValueError(f"a path outside cpufreq: {path[:80]!r}")
    return CpuGovernor(host, paths=params)


FAMILY = Family(CpuGovernor.family, build, rebuild)
