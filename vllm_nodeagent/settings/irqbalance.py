"""irqbalance, the systemd unit that moves interrupts: stopped (and disabled) so IRQ affinity pinning sticks."""

from __future__ import annotations

import shutil
from typing import Optional

from vllm_nodeagent.host import Host, subp
from vllm_nodeagent.host.subp import CommandError, Result, without_notify
from vllm_nodeagent.settings.base import BuildInputs, Family, NotApplicable, Tunable, TunableError, only_params

SYSTEMCTL_TIMEOUT_S = 30


class Irqbalance:
    """The irqbalance unit: "stop" wants it inactive and disabled; "keep" expects it active and enabled.

    "keep" only reports: an agent that starts a service the operator stopped would surprise them.
    """

    family = "irqbalance"
    unit = "irqbalance.service"

    def __init__(self, host: Host, policy: str = "stop") -> None:
        self.host = host
        self.id = "irqbalance"
        self.policy = policy
        self.owner: Optional[str] = (
            'the operator ([irq] irqbalance = "keep": reported, never changed)' if policy == "keep" else None
        )

    def params(self) -> dict[str, str]:
        return {}

    def _systemctl(self, *args: str) -> Result:
        exe = shutil.which("systemctl")
        if exe is None:
            raise NotApplicable("systemctl not found")
        # SYSTEMCTL_SKIP_SYSV: Debian's `systemctl disable` also runs update-rc.d, which writes /etc/rc?.d and
        # fails under the unit's ProtectSystem=strict; on a systemd host those links are unused (found in the VM
        # bed). NOTIFY_SOCKET is dropped: only the agent itself may talk to systemd's notify socket.
        env = without_notify()
        env["SYSTEMCTL_SKIP_SYSV"] = "1"
        try:
            return subp.run([exe, *args], SYSTEMCTL_TIMEOUT_S, env)
        except CommandError as exc:  # a hung systemd fails this setting, not the daemon
            raise TunableError(str(exc)) from None

    def read(self) -> str:
        # Only the real host's systemd can answer; a --root tree has no service manager.
        if not self.host.is_real:
            raise NotApplicable("no service manager under --root")
        if not self.host.exists("/run/systemd/system"):
            raise NotApplicable("systemd is not the service manager here")
        active = self._systemctl("is-active", self.unit).stdout.strip()
        enabled = self._systemctl("is-enabled", self.unit).stdout.strip()
        if enabled in ("", "not-found") or "No such file" in enabled:
            raise NotApplicable("irqbalance is not installed")
        return f"{active}/{enabled}"

    def desired(self) -> str:
        return "inactive/disabled" if self.policy == "stop" else "active/enabled"

    def compliant(self, current: str) -> bool:
        active, _, enabled = current.partition("/")
        if self.policy == "stop":
            return active in ("inactive", "failed") and enabled in ("disabled", "masked")
        return active == "active" and enabled == "enabled"

    def target(self, current: str) -> str:
        return self.desired()

    def write(self, value: str) -> None:
        active, _, enabled = value.partition("/")
        steps: list[tuple[str, ...]] = []
        steps.append(("enable",) if enabled == "enabled" else ("disable",) if enabled == "disabled" else ())
        steps.append(("start",) if active == "active" else ("stop",))
        for step in steps:
            if not step:
                continue
            res = self._systemctl(*step, self.unit)
            if res.returncode != 0:
                raise TunableError(f"systemctl {step[0]} {self.unit}: {res.stderr.strip() or res.returncode}")

    def hint(self) -> str:
        if self.policy == "stop":
            return "by hand: systemctl disable --now irqbalance (needed for irq affinity pinning to stick)"
        return "by hand: systemctl enable --now irqbalance"

    def note(self, current: str) -> str:
        return ""

    def invalid(self, current: str) -> str:
        return ""


def build(inputs: BuildInputs) -> list[Tunable]:
    irq = inputs.config.irq
    if irq is None or irq.irqbalance not in ("stop", "keep"):
        return []
    return [Irqbalance(inputs.host, irq.irqbalance)]


def rebuild(host: Host, nvml: object, params: dict[str, str]) -> Tunable:
    only_params(params)
    return Irqbalance(host)


FAMILY = Family(Irqbalance.family, build, rebuild)
