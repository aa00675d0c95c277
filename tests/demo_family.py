"""A setting family the agent does not ship: one module, as a new family would be (see tests/test_families.py)."""

from __future__ import annotations

import re

from vllm_nodeagent.host import Host
from vllm_nodeagent.settings.base import BuildInputs, Family, FileTunable, Tunable, only_params, param

PATH = "/sys/kernel/demo/knob"


class DemoKnob(FileTunable):
    family = "demo"

    def __init__(self, host: Host, desired: str = "") -> None:
        super().__init__(host, "demo.knob", PATH, desired)

    def params(self) -> dict[str, str]:
        return {"knob": "knob"}


def build(inputs: BuildInputs) -> list[Tunable]:
    return [DemoKnob(inputs.host, "on")]


def rebuild(host: Host, nvml: object, params: dict[str, str]) -> Tunable:
    only_params(params, "knob")
    param(params, "knob", re.compile("knob"))
    return DemoKnob(host)


FAMILY = Family(DemoKnob.family, build, rebuild)
