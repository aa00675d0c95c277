"""Kernel sysctls under /proc/sys. Numbers are floors unless the config says exact."""

from __future__ import annotations

import re
import shlex
from typing import Optional

from vllm_nodeagent.config import SysctlSetting
from vllm_nodeagent.host import Host
from vllm_nodeagent.host.parse import ParseError, parse_sysctl_vector
from vllm_nodeagent.settings.base import BuildInputs, Family, FileTunable, Tunable, UnknownSetting, only_params, param


def sysctl_path(name: str) -> str:
    return "/proc/sys/" + name.replace(".", "/")


class Sysctl(FileTunable):
    family = "sysctl"

    def __init__(self, host: Host, name: str, value: str = "", mode: str = "exact") -> None:
        super().__init__(host, f"sysctl.{name}", sysctl_path(name), value)
        self.name = name
        self.mode = mode
        self._current: Optional[str] = None  # last value read: the doctor hint shows what apply would write
        self._wrote = False

    @classmethod
    def from_setting(cls, host: Host, setting: SysctlSetting) -> Sysctl:
        return cls(host, setting.name, setting.value, setting.mode)

    def params(self) -> dict[str, str]:
        return {"name": self.name}

    def read(self) -> str:
        if not self.host.exists(self.path):
            raise UnknownSetting(f"no such sysctl on this kernel ({self.path} does not exist): check the name")
        self._current = super().read()
        return self._current

    def invalid(self, current: str) -> str:
        """A numeric sysctl takes integers, as many as the kernel prints (tcp_rmem: 3); checked before any write."""
        try:
            have = parse_sysctl_vector(current)
        except ParseError:
            return ""  # a word-valued sysctl (tcp_congestion_control): the kernel is the judge
        try:
            want = parse_sysctl_vector(self._desired)
        except ParseError:
            return f"{self.name} takes integers (the kernel has {' '.join(current.split())}), not {self._desired!r}"
        if len(want) != len(have):
            return (
                f"{self.name} takes {len(have)} integer field(s) (the kernel has {' '.join(current.split())}), "
                f"got {len(want)}: {self._desired}"
            )
        return ""

    def _range(self, current: str) -> Optional[tuple[list[int], list[int]]]:
        try:
            have, want = parse_sysctl_vector(current), parse_sysctl_vector(self._desired)
        except ParseError:
            return None
        return (have, want) if len(have) == len(want) == 2 else None

    def compliant(self, current: str) -> bool:
        if self.mode == "range":
            # Both ends matter: the live range must contain the configured one (LOW at most, HIGH at least).
            pair = self._range(current)
            return pair is not None and pair[0][0] <= pair[1][0] and pair[0][1] >= pair[1][1]
        if self.mode == "exact":
            return current.split() == self._desired.split()  # the kernel prints tabs, configs spaces
        try:
            have, want = parse_sysctl_vector(current), parse_sysctl_vector(self._desired)
        except ParseError:
            return False
        # Each field of a triple (tcp_rmem: min default max) is its own floor.
        return len(have) == len(want) and all(h >= w for h, w in zip(have, want))

    def target(self, current: str) -> str:
        if self.mode == "range":
            pair = self._range(current)
            if pair is None:
                return self._desired
            (lo, hi), (want_lo, want_hi) = pair
            return f"{min(lo, want_lo)} {max(hi, want_hi)}"  # widen: never narrow what the host allows
        if self.mode == "exact":
            return self._desired
        try:
            have, want = parse_sysctl_vector(current), parse_sysctl_vector(self._desired)
        except ParseError:
            return self._desired
        if len(have) != len(want):
            return self._desired
        return " ".join(str(max(h, w)) for h, w in zip(have, want))

    def hint(self) -> str:
        # What apply would write from the value last read: a floor keeps fields already above it.
        current = self._current
        value = self.target(current) if current is not None and not self.invalid(current) else self._desired
        return f"by hand: sysctl -w {shlex.quote(self.name + '=' + ' '.join(value.split()))}"

    def write(self, value: str) -> None:
        super().write(value)
        self._wrote = True

    def note(self, current: str) -> str:
        if self.mode == "range" and self.compliant(current) and current.split() != self._desired.split():
            return "the live range contains the configured one; left as is"
        if self.mode == "floor" and self.compliant(current) and current.split() != self._desired.split():
            # After a write only some fields were above the floor: "left as is" would contradict "changed".
            return "fields above the floor kept" if self._wrote else "above the floor; left as is"
        return ""


def build(inputs: BuildInputs) -> list[Tunable]:
    return [Sysctl.from_setting(inputs.host, s) for s in inputs.config.sysctl or ()]


_NAME = re.compile(r"[a-z0-9_]+(\.[A-Za-z0-9_\-]+)+")


def rebuild(host: Host, nvml: object, params: dict[str, str]) -> Tunable:
    only_params(params, "name")
    return Sysctl(host, param(params, "name", _NAME))


FAMILY = Family(Sysctl.family, build, rebuild)
