"""apply / verify / drift / revert: loops over the Tunable list with the journal beside them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Optional

from vllm_nodeagent import log
from vllm_nodeagent.host import Host
from vllm_nodeagent.settings.base import Check, NotApplicable, Tunable, TunableError, UnknownSetting
from vllm_nodeagent.settings.families import rebuild
from vllm_nodeagent.settings.journal import Journal, JournalError

# Outcome statuses
OK, CHANGED, WOULD_CHANGE, FAILED, SKIPPED, DRIFTED, RESTORED = (
    "ok",
    "changed",
    "would-change",
    "failed",
    "skipped",
    "drifted",
    "restored",
)
NOT_CHANGED = "not-changed"  # refused before any write (no journal, a value the setting cannot take): a failure
LEFT = "left"  # revert: someone changed it after the agent did; theirs is kept
UNTOUCHED = "untouched"  # revert: found compliant at apply, never written, so nothing to restore
MISSING = "missing"  # configured, but the kernel has no such setting (a typo, or a module not loaded)
FAILURES = (FAILED, NOT_CHANGED)


@dataclass(frozen=True)
class Outcome:
    id: str
    status: str
    current: Optional[str] = None
    desired: Optional[str] = None
    message: str = ""
    previous: Optional[str] = None  # what it was before this run changed it (changed, restored)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def same(a: str, b: Optional[str]) -> bool:
    """Equal as the kernel means it: sysctl vectors read back with tabs where they were written with spaces."""
    return b is not None and a.split() == b.split()


def selected(tunables: list[Tunable], only: Optional[list[str]]) -> list[Tunable]:
    """``--only`` takes ids or dotted prefixes ("sysctl" selects every sysctl)."""
    if not only:
        return list(tunables)
    return [t for t in tunables if any(t.id == o or t.id.startswith(o.rstrip(".") + ".") for o in only)]


def _put_back(t: Tunable, before: str) -> str:
    """After a refused or half-taken write: restore ``before`` if the setting moved. Says what happened."""
    try:
        now = t.read()
        if same(now, before):
            return "the host was left as it was"
        t.write(before)
        again = t.read()
        if not same(again, before):
            return f"putting back {show(before)} did not take: the kernel reports {show(again)}"
        return f"the kernel had half-applied it ({show(now)}); put back {show(before)}"
    except (NotApplicable, TunableError) as exc:
        return f"and putting back {show(before)} failed: {exc}"


def unrevertable(t: Tunable) -> str:
    """Why revert could not rebuild this setting's writer from what the journal keeps ("" when it can): checked
    before journaling, so the agent never journals an entry it would refuse at revert (issue 22)."""
    try:
        rebuild(t.family, t.id, t.params(), _NOWHERE, None)  # rebuilders only construct: nothing is read
    except ValueError as exc:
        return f"revert could not rebuild it from the journal ({exc})"
    return ""


_NOWHERE = Host("/")


def apply_one(t: Tunable, journal: Journal, dry_run: bool = False) -> Outcome:
    try:
        current = t.read()
    except UnknownSetting as exc:
        return Outcome(t.id, NOT_CHANGED, None, t.desired(), str(exc))
    except NotApplicable as exc:
        return Outcome(t.id, SKIPPED, None, t.desired(), str(exc))
    except TunableError as exc:
        return Outcome(t.id, FAILED, None, t.desired(), str(exc))
    refusal = t.invalid(current)
    if refusal:
        return Outcome(t.id, NOT_CHANGED, current, t.desired(), refusal)
    if t.compliant(current):
        if not dry_run and not t.owner:
            # Journaled as found (never written): if it drifts later and we re-apply, the original to restore is
            # this value, not whatever someone changed it to in between. Revert writes nothing for it.
            try:
                why = unrevertable(t)
                if why:
                    raise JournalError(why)
                journal.record(t.id, t.family, t.params(), current)
            except JournalError as exc:
                return Outcome(t.id, OK, current, t.desired(), f"compliant, but not journaled: {exc}")
        return Outcome(t.id, OK, current, t.desired(), t.note(current))
    if t.owner:
        return Outcome(t.id, SKIPPED, current, t.desired(), f"managed by {t.owner}; not changed")
    value = t.target(current)
    if dry_run:
        return Outcome(t.id, WOULD_CHANGE, value, t.desired(), t.note(current), previous=current)
    why = unrevertable(t)
    if why:
        return Outcome(t.id, NOT_CHANGED, current, t.desired(), f"not journaled: {why}")
    try:
        journal.record(t.id, t.family, t.params(), current, written=value)
    except JournalError as exc:
        # Without a durable original there is no safe revert: do not touch the setting.
        return Outcome(t.id, NOT_CHANGED, current, t.desired(), str(exc))
    try:
        t.write(value)
    except TunableError as exc:
        return Outcome(t.id, FAILED, current, t.desired(), f"kernel refused: {exc}; {_put_back(t, current)}")
    try:
        after = t.read()
    except (NotApplicable, TunableError) as exc:
        return Outcome(t.id, FAILED, None, t.desired(), f"written but unreadable: {exc}")
    if not t.compliant(after):
        return Outcome(
            t.id,
            FAILED,
            after,
            t.desired(),
            f"wrote {show(value)} but the kernel reports {show(after)}; {_put_back(t, current)}",
        )
    if not same(after, value):
        # The kernel normalised what we wrote: revert compares the live value with what it reports.
        try:
            journal.record(t.id, t.family, t.params(), current, written=after)
        except JournalError as exc:
            log.get().warning("journal_written_value", id=t.id, error=str(exc))
    return Outcome(t.id, CHANGED, after, t.desired(), t.note(after), previous=current)


def apply(tunables: list[Tunable], journal: Journal, dry_run: bool = False, log_results: bool = True) -> list[Outcome]:
    """``log_results``: the daemon logs each result; one-shot commands print them instead (once)."""
    logger = log.get()
    outcomes: list[Outcome] = []
    for t in tunables:
        o = apply_one(t, journal, dry_run)
        outcomes.append(o)
        if not log_results:
            continue
        level = logger.warning if o.status in FAILURES else logger.info
        level("setting", id=o.id, status=o.status, current=o.current, desired=o.desired, detail=o.message)
    return outcomes


def verify(tunables: Sequence[Check]) -> list[Outcome]:
    """Read-only: where each setting stands (doctor uses this)."""
    out: list[Outcome] = []
    for t in tunables:
        try:
            current = t.read()
        except UnknownSetting as exc:
            out.append(Outcome(t.id, MISSING, None, t.desired(), str(exc)))
            continue
        except NotApplicable as exc:
            out.append(Outcome(t.id, SKIPPED, None, t.desired(), str(exc)))
            continue
        except TunableError as exc:
            out.append(Outcome(t.id, FAILED, None, t.desired(), str(exc)))
            continue
        refusal = t.invalid(current)
        if refusal:
            out.append(Outcome(t.id, FAILED, current, t.desired(), refusal))
            continue
        ok = t.compliant(current)
        out.append(Outcome(t.id, OK if ok else DRIFTED, current, t.desired(), t.note(current)))
    return out


def drift(tunables: list[Tunable], journal: Journal) -> list[Outcome]:
    """Settings the agent applied (journaled) that no longer hold. Read-only."""
    applied = set(journal.entries())
    return [o for o in verify([t for t in tunables if t.id in applied]) if o.status == DRIFTED]


def show(value: Optional[str], width: int = 48) -> str:
    """A value as a person reads it: tabs and newlines as single spaces, long values elided, no reprs."""
    if value is None:
        return "-"
    text = " ".join(value.split())
    text = "".join(c if c.isprintable() else "?" for c in text) or '""'
    return text if len(text) <= width else text[: width - 1] + "…"
