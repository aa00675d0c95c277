"""Transparent huge pages: /sys/kernel/mm/transparent_hugepage/{enabled,defrag}, bracketed current value."""

from __future__ import annotations

from vllm_nodeagent.host import Host
from vllm_nodeagent.settings.base import FileTunable, NotApplicable

THP_DIR = "/sys/kernel/mm/transparent_hugepage"


class Thp(FileTunable):
    kind = "thp"

    def __init__(self, host: Host, knob: str, desired: str = "") -> None:
        super().__init__(host, f"thp.{knob}", f"{THP_DIR}/{knob}", desired)
        self.knob = knob

    def params(self) -> dict[str, str]:
        return {"knob": self.knob}

    def read(self) -> str:
        current, offered = self.read_bracketed()
        if self._desired and self._desired not in offered:
            raise NotApplicable(f"this kernel offers {' '.join(offered)}, not {self._desired}")
        return current

    def hint(self) -> str:
        return (
            f"vllm-nodeagent apply --only {self.id}; to persist across reboots without the agent, "
            f"boot with transparent_hugepage={self._desired}" if self.knob == "enabled" else super().hint()
        )
