"""Transparent huge pages: /sys/kernel/mm/transparent_hugepage/{enabled,defrag}, bracketed current value."""

from __future__ import annotations

from vllm_nodeagent.host import Host
from vllm_nodeagent.parse import ParseError, parse_bracket_list
from vllm_nodeagent.tunables.base import FileTunable, NotApplicable, TunableError

THP_DIR = "/sys/kernel/mm/transparent_hugepage"


class Thp(FileTunable):
    kind = "thp"

    def __init__(self, host: Host, knob: str, desired: str = "") -> None:
        super().__init__(host, f"thp.{knob}", f"{THP_DIR}/{knob}", desired)
        self.knob = knob

    def params(self) -> dict[str, str]:
        return {"knob": self.knob}

    def offered(self) -> tuple[str, list[str]]:
        raw = super().read()
        try:
            current, offered = parse_bracket_list(raw)
        except ParseError as exc:
            raise TunableError(f"{self.path}: {exc}") from None
        if current is None:
            raise TunableError(f"{self.path}: no bracketed current value in {raw!r}")
        return current, offered

    def read(self) -> str:
        current, offered = self.offered()
        if self._desired and self._desired not in offered:
            raise NotApplicable(f"this kernel offers {' '.join(offered)}, not {self._desired}")
        return current

    def hint(self) -> str:
        return (
            f"vllm-nodeagent apply --only {self.id}; to persist across reboots without the agent, "
            f"boot with transparent_hugepage={self._desired}" if self.knob == "enabled" else super().hint()
        )
