"""The I/O scheduler of block devices chosen by globs: /sys/block/<dev>/queue/scheduler."""

from __future__ import annotations

import re

from vllm_nodeagent.host import Host
from vllm_nodeagent.settings.base import (
    BuildInputs,
    Family,
    FileTunable,
    Tunable,
    TunableError,
    Unavailable,
    only_params,
    param,
)

# blk-mq kernels (all since 5.0) call the pass-through elevator "none"; "noop" was the legacy name.
ALIASES = {"noop": "none"}


class BlockScheduler(FileTunable):
    family = "block"

    def __init__(self, host: Host, device: str, desired: str = "") -> None:
        super().__init__(host, f"block.{device}.scheduler", f"/sys/block/{device}/queue/scheduler", desired)
        self.device = device
        self.configured = desired

    def params(self) -> dict[str, str]:
        return {"device": self.device}

    def read(self) -> str:
        current, offered = self.read_bracketed()
        if self.configured:
            if self.configured in offered:
                self._desired = self.configured
            elif ALIASES.get(self.configured) in offered:
                self._desired = ALIASES[self.configured]
            else:
                raise TunableError(
                    f"{self.device} offers {', '.join(offered)}, not {self.configured!r}: set [block] scheduler to "
                    "one of them (or load its module)"
                )
        return current

    def note(self, current: str) -> str:
        if self.configured in ALIASES and self._desired == ALIASES[self.configured]:
            return f'"{self.configured}" is called "{self._desired}" on blk-mq kernels; using "{self._desired}"'
        return ""


def matching_devices(host: Host, patterns: list[str]) -> list[str]:
    names: set[str] = set()
    for pattern in patterns:
        names.update(p.rsplit("/", 1)[1] for p in host.glob("/sys/block", pattern))
    return sorted(names)


def build(inputs: BuildInputs) -> list[Tunable]:
    block = inputs.config.block
    if block is None:
        return []
    devices = matching_devices(inputs.host, block.devices)
    if not devices:
        return [
            Unavailable(
                BlockScheduler.family,
                "block.scheduler",
                block.scheduler,
                f"no block device matches {' '.join(block.devices)}",
            )
        ]
    return [BlockScheduler(inputs.host, dev, block.scheduler) for dev in devices]


_DEVICE = re.compile(r"[A-Za-z0-9_\-:]{1,64}")


def rebuild(host: Host, nvml: object, params: dict[str, str]) -> Tunable:
    only_params(params, "device")
    return BlockScheduler(host, param(params, "device", _DEVICE))


FAMILY = Family(BlockScheduler.family, build, rebuild)
