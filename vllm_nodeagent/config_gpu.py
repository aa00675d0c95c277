"""The [gpu] keys whose values are more than one type: power_limit and clocks (issue 27), for config.py.

Kept beside config.py (which declares them in GpuConfig) so that module stays one screenful of schema; no
import of config here, so config.py can import this.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Union

Bad = Callable[[str], Exception]  # the key's one-line config error, with this message
Sub = Callable[[str, Any, str], Exception]  # the same for a key inside the inline table: (name, value, message)


@dataclass(frozen=True)
class ClockPair:
    """[gpu] clocks = { graphics = MHz, memory = MHz }: application clocks to set (nvidia-smi -ac memory,graphics)."""

    graphics: int
    memory: int


# Wider than any GPU NVML drives (each GPU's own range is checked at apply, against its constraints).
POWER_LIMIT_W = (10, 3000)
CLOCK_MHZ = (100, 20000)


def gpu_power(raw: Any, bad: Bad) -> str:
    """ "max", "default", or a number of watts in the widest plausible range, normalised ("650", "612.5")."""
    if isinstance(raw, str):
        if raw not in ("max", "default"):
            raise bad('expected "max", "default" or a number of watts')
        return raw
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise bad('expected "max", "default" or a number of watts')
    lo, hi = POWER_LIMIT_W
    if not lo <= raw <= hi:
        raise bad(f"out of range: a GPU power limit is {lo} to {hi} W (each GPU's own range is checked at apply)")
    return f"{round(float(raw), 3)}".rstrip("0").rstrip(".")  # to the milliwatt: 1234.567 stays 1234.567


def gpu_clocks(raw: Any, bad: Bad, sub: Sub) -> Union[str, ClockPair]:
    if isinstance(raw, str):
        if raw not in ("max", "default"):
            raise bad('expected "max", "default" or { graphics = MHz, memory = MHz }')
        return raw
    if not isinstance(raw, dict):
        raise bad('expected "max", "default" or { graphics = MHz, memory = MHz }')

    unknown = set(raw) - {"graphics", "memory"}
    if unknown:
        name = sorted(unknown)[0]
        raise sub(name, raw[name], "unknown key (known: graphics, memory)")
    lo, hi = CLOCK_MHZ
    values = {}
    for name in ("graphics", "memory"):
        if name not in raw:
            raise sub(name, None, "required key is missing (both clocks, in MHz)")
        v = raw[name]
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise sub(name, v, f"expected an integer number of MHz, {lo} to {hi}")
        values[name] = v
    return ClockPair(graphics=values["graphics"], memory=values["memory"])
