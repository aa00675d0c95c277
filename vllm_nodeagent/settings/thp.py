"""Transparent huge pages: /sys/kernel/mm/transparent_hugepage/{enabled,defrag}, bracketed current value."""

from __future__ import annotations

import re

from vllm_nodeagent.host import Host
from vllm_nodeagent.settings.base import BuildInputs, Family, FileTunable, Tunable, TunableError, only_params, param

THP_DIR = "/sys/kernel/mm/transparent_hugepage"


class Thp(FileTunable):
    family = "thp"

    def __init__(self, host: Host, knob: str, desired: str = "") -> None:
        super().__init__(host, f"thp.{knob}", f"{THP_DIR}/{knob}", desired)
        self.knob = knob

    def params(self) -> dict[str, str]:
        return {"knob": self.knob}

    def read(self) -> str:
        current, offered = self.read_bracketed()
        if self._desired and self._desired not in offered:
            # A value the kernel does not offer is a config error for this host, like an unknown sysctl: fail.
            raise TunableError(
                f"this kernel offers {', '.join(offered)}, not {self._desired!r}: set [thp] {self.knob} to one of them"
            )
        return current

    def hint(self) -> str:
        return (
            f"to persist across reboots without the agent, boot with transparent_hugepage={self._desired}"
            if self.knob == "enabled"
            else super().hint()
        )


def build(inputs: BuildInputs) -> list[Tunable]:
    thp = inputs.config.thp
    if thp is None:
        return []
    return [
        Thp(inputs.host, knob, value)
        for knob, value in (("enabled", thp.enabled), ("defrag", thp.defrag))
        if value is not None
    ]


def rebuild(host: Host, nvml: object, params: dict[str, str]) -> Tunable:
    only_params(params, "knob")
    return Thp(host, param(params, "knob", re.compile("enabled|defrag")))


FAMILY = Family(Thp.family, build, rebuild)
