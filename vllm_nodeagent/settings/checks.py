"""Doctor's checks of the settings the config manages: the engine's read-only verify, each outcome said as a check
``Status`` here, beside the settings (the engine's outcomes — ok, drifted, missing, … — are what apply, drift and
revert speak). Registered in doctor's registry (checks/registry.py)."""

from __future__ import annotations

from typing import Optional

from vllm_nodeagent.checks.base import CheckResult, Fix, Probe, Registered
from vllm_nodeagent.checks.status import Status
from vllm_nodeagent.settings import engine
from vllm_nodeagent.settings.base import Tunable
from vllm_nodeagent.settings.families import build_tunables


def setting_checks(tunables: list[Tunable]) -> list[CheckResult]:
    """One result per configured setting. A setting that does not hold gets a fix: ``apply --only ID`` (the
    command line prefix comes from the context at presentation), or the owner's command; DESIRED is what apply
    would write from the value read (a floor keeps fields already above it), not the config's text."""
    by_id = {t.id: t for t in tunables}
    checks: list[CheckResult] = []
    for o in engine.verify(tunables):
        t = by_id[o.id]
        fix: Optional[Fix] = None
        desired = o.desired
        if o.status == engine.OK:
            status, hint = Status.PASS, ""
        elif o.status == engine.SKIPPED:
            status, hint = Status.SKIP, ""
        elif o.status == engine.MISSING:
            status, hint = Status.WARN, "check the name in the config (a typo, or a kernel module not loaded)"
        else:
            # someone else owns it: tell, don't fail the host for it
            status = (
                Status.WARN
                if o.status == engine.DRIFTED and (t.owner or getattr(t, "advisory", False))
                else Status.FAIL
            )
            hint = t.hint()
            argv = tuple(getattr(t, "fix_argv", tuple)())
            if o.status == engine.DRIFTED:
                fix = Fix(argv=argv, note=hint) if argv else Fix(args=("apply", "--only", t.id), note=hint)
                if o.current is not None and not argv:
                    desired = t.target(o.current)
        checks.append(CheckResult(o.id, status, o.current, desired, hint, o.message, fix))
    return checks


def checks(probe: Probe) -> list[CheckResult]:
    """One result per configured setting, in apply order."""
    return setting_checks(build_tunables(probe.config, probe.topo, probe.host, probe.nvml, probe.nvml_why))


# The ids the families give their settings (settings/*.py); tests/test_doctor_registry.py checks that every setting
# built on the 8-GPU tree has one of them, so a new family cannot hide from doctor --only.
IDS = ("sysctl.*", "thp.*", "block.*", "cpu.*", "gpu.*", "irqbalance", "irq.*", "vllm.bytecode")
CHECKS = Registered(IDS, checks)
