"""apply / verify / drift / revert: loops over the Tunable list with the journal beside them."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Optional

from vllm_nodeagent import log
from vllm_nodeagent.host import Host
from vllm_nodeagent.journal import Journal, JournalError
from vllm_nodeagent.nvml import Nvml
from vllm_nodeagent.tunables.base import NotApplicable, Tunable, TunableError
from vllm_nodeagent.tunables.registry import rebuild

if TYPE_CHECKING:
    from vllm_nodeagent.cli import Context

# Outcome statuses
OK, CHANGED, WOULD_CHANGE, FAILED, SKIPPED, DRIFTED, RESTORED = (
    "ok", "changed", "would-change", "failed", "skipped", "drifted", "restored")


@dataclass(frozen=True)
class Outcome:
    id: str
    status: str
    current: Optional[str] = None
    desired: Optional[str] = None
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def selected(tunables: list[Tunable], only: Optional[list[str]]) -> list[Tunable]:
    """``--only`` takes ids or dotted prefixes ("sysctl" selects every sysctl)."""
    if not only:
        return list(tunables)
    return [t for t in tunables if any(t.id == o or t.id.startswith(o.rstrip(".") + ".") for o in only)]


def apply_one(t: Tunable, journal: Journal, dry_run: bool = False) -> Outcome:
    try:
        current = t.read()
    except NotApplicable as exc:
        return Outcome(t.id, SKIPPED, None, t.desired(), str(exc))
    except TunableError as exc:
        return Outcome(t.id, FAILED, None, t.desired(), str(exc))
    if t.compliant(current):
        if not dry_run and not t.owner:
            # Journal it even though nothing is written now: if it drifts later and we re-apply, the original
            # to restore is this value, not whatever someone changed it to in between.
            try:
                journal.record(t.id, t.kind, t.params(), current)
            except JournalError as exc:
                return Outcome(t.id, OK, current, t.desired(), f"compliant, but not journaled: {exc}")
        return Outcome(t.id, OK, current, t.desired(), t.note(current))
    if t.owner:
        return Outcome(t.id, SKIPPED, current, t.desired(), f"managed by {t.owner}; not changed")
    value = t.target(current)
    if dry_run:
        return Outcome(t.id, WOULD_CHANGE, current, value, t.note(current))
    try:
        journal.record(t.id, t.kind, t.params(), current)
    except JournalError as exc:
        # Without a recorded original there is no safe revert: do not touch the setting.
        return Outcome(t.id, FAILED, current, t.desired(), f"not changed: {exc}")
    try:
        t.write(value)
    except TunableError as exc:
        return Outcome(t.id, FAILED, current, t.desired(), f"kernel refused: {exc}")
    try:
        after = t.read()
    except (NotApplicable, TunableError) as exc:
        return Outcome(t.id, FAILED, None, t.desired(), f"written but unreadable: {exc}")
    if not t.compliant(after):
        return Outcome(t.id, FAILED, after, t.desired(), f"wrote {value!r} but the kernel reports {after!r}")
    return Outcome(t.id, CHANGED, after, t.desired(), f"was {current!r}")


def apply(tunables: list[Tunable], journal: Journal, dry_run: bool = False) -> list[Outcome]:
    logger = log.get()
    outcomes: list[Outcome] = []
    for t in tunables:
        o = apply_one(t, journal, dry_run)
        outcomes.append(o)
        level = logger.warning if o.status == FAILED else logger.info
        level("setting", id=o.id, status=o.status, current=o.current, desired=o.desired, detail=o.message)
    return outcomes


def verify(tunables: list[Tunable]) -> list[Outcome]:
    """Read-only: where each setting stands (doctor uses this)."""
    out: list[Outcome] = []
    for t in tunables:
        try:
            current = t.read()
        except NotApplicable as exc:
            out.append(Outcome(t.id, SKIPPED, None, t.desired(), str(exc)))
            continue
        except TunableError as exc:
            out.append(Outcome(t.id, FAILED, None, t.desired(), str(exc)))
            continue
        ok = t.compliant(current)
        out.append(Outcome(t.id, OK if ok else DRIFTED, current, t.desired(), t.note(current)))
    return out


def drift(tunables: list[Tunable], journal: Journal) -> list[Outcome]:
    """Settings the agent applied (journaled) that no longer hold. Read-only."""
    applied = set(journal.entries())
    return [o for o in verify([t for t in tunables if t.id in applied]) if o.status == DRIFTED]


def revert(host: Host, journal: Journal, nvml: Optional[Nvml] = None) -> list[Outcome]:
    """Write every journaled original back, exactly; forget each entry once it reads back the same."""
    outcomes: list[Outcome] = []
    for entry in journal.entries().values():
        try:
            t = rebuild(entry.kind, entry.id, entry.params, host, nvml)
            t.write(entry.original)
            after = t.read()
        except (TunableError, NotApplicable, ValueError) as exc:
            outcomes.append(Outcome(entry.id, FAILED, None, entry.original, str(exc)))
            continue
        if after != entry.original:
            outcomes.append(Outcome(entry.id, FAILED, after, entry.original, "did not read back the original"))
            continue
        journal.forget(entry.id)
        outcomes.append(Outcome(entry.id, RESTORED, after, entry.original, ""))
    for o in outcomes:
        (log.get().warning if o.status == FAILED else log.get().info)(
            "revert", id=o.id, status=o.status, current=o.current, original=o.desired, detail=o.message)
    return outcomes


# -- commands ------------------------------------------------------------------------------------------
def _print_outcomes(outcomes: list[Outcome], as_json: bool) -> None:
    from vllm_nodeagent.cli import print_json

    if as_json:
        print_json({"results": [o.to_json() for o in outcomes]})
        return
    for o in outcomes:
        detail = f"  ({o.message})" if o.message else ""
        print(f"{o.status:<12} {o.id}: {o.current!s} -> {o.desired!s}{detail}")


def cmd_apply(ctx: Context, args: argparse.Namespace) -> int:
    from vllm_nodeagent.topology import discover
    from vllm_nodeagent.tunables.registry import build_tunables

    nvml, why = ctx.open_nvml()  # once: discovery and the GPU settings share the session
    try:
        topo = discover(ctx.host, nvml, why)
        for w in topo.warnings:
            log.get().warning("topology_mismatch", detail=w)
        tunables = selected(build_tunables(ctx.config, topo, ctx.host, nvml, why), args.only)
        if args.only and not tunables:
            print(f"vllm-nodeagent: --only {' '.join(args.only)}: matches no configured setting")
            return 2
        journal = Journal(ctx.host, ctx.config.agent.state_dir)
        if args.dry_run:
            outcomes = apply(tunables, journal, dry_run=True)
        else:
            with journal.locked():
                outcomes = apply(tunables, journal)
    finally:
        if nvml is not None:
            nvml.close()
    _print_outcomes(outcomes, args.json)
    return 1 if any(o.status == FAILED for o in outcomes) else 0


def cmd_revert(ctx: Context, args: argparse.Namespace) -> int:
    nvml, _ = ctx.open_nvml()
    journal = Journal(ctx.host, ctx.config.agent.state_dir)
    try:
        with journal.locked():
            outcomes = revert(ctx.host, journal, nvml)
    except JournalError as exc:
        print(f"vllm-nodeagent: {exc}")
        return 1
    finally:
        if nvml is not None:
            nvml.close()
    if not outcomes and not args.json:
        print("nothing to revert: the journal is empty")
    _print_outcomes(outcomes, args.json)
    return 1 if any(o.status == FAILED for o in outcomes) else 0
