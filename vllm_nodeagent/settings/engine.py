"""apply / verify / drift / revert: loops over the Tunable list with the journal beside them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Optional

from vllm_nodeagent import log
from vllm_nodeagent.host import Host
from vllm_nodeagent.nvml import Nvml
from vllm_nodeagent.settings.base import Check, MultiFileTunable, NotApplicable, Tunable, TunableError, UnknownSetting
from vllm_nodeagent.settings.families import rebuild
from vllm_nodeagent.settings.journal import Entry, Journal, JournalError

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
                journal.record(t.id, t.family, t.params(), current)
            except JournalError as exc:
                return Outcome(t.id, OK, current, t.desired(), f"compliant, but not journaled: {exc}")
        return Outcome(t.id, OK, current, t.desired(), t.note(current))
    if t.owner:
        return Outcome(t.id, SKIPPED, current, t.desired(), f"managed by {t.owner}; not changed")
    value = t.target(current)
    if dry_run:
        return Outcome(t.id, WOULD_CHANGE, value, t.desired(), t.note(current), previous=current)
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


def revert_one(entry: Entry, host: Host, nvml: Optional[Nvml]) -> Outcome:
    """Restore one entry if, and only if, the live value is still what the agent wrote."""
    try:
        t = rebuild(entry.family, entry.id, entry.params, host, nvml)
    except ValueError as exc:
        return Outcome(entry.id, FAILED, None, entry.original, f"journal entry not restorable: {exc}")
    if entry.written is None and not entry.legacy:
        return Outcome(entry.id, UNTOUCHED, None, entry.original, "found compliant at apply; never written")
    if isinstance(t, MultiFileTunable) and not entry.legacy:
        return _revert_members(t, entry)
    try:
        live = t.read()
        if same(live, entry.original):
            return Outcome(entry.id, RESTORED, live, entry.original, "already the original")
        if not entry.legacy and not same(live, entry.written):
            return Outcome(
                entry.id,
                LEFT,
                live,
                entry.original,
                f"changed by someone else since apply (agent wrote {show(entry.written)}): left as is",
            )
        t.write(entry.original)
        after = t.read()
    except (TunableError, NotApplicable) as exc:
        return Outcome(entry.id, FAILED, None, entry.original, str(exc))
    if not same(after, entry.original):
        return Outcome(entry.id, FAILED, after, entry.original, "did not read back the original")
    return Outcome(entry.id, RESTORED, after, entry.original, "", previous=live)


def _revert_members(t: MultiFileTunable, entry: Entry) -> Outcome:
    """Per file (a governor per policy, an affinity per IRQ): a crash can leave some members written, some not."""
    try:
        original, written = t.split(entry.original), t.split(entry.written or "")
        live = t.read_each()
        todo = {
            m: original[m]
            for m, v in live.items()
            if m in original and not same(v, original[m]) and same(v, written.get(m))
        }
        others = sorted(
            m for m, v in live.items() if m in original and not same(v, original[m]) and not same(v, written.get(m))
        )
        if todo:
            t.write(" ".join(f"{m}={v}" for m, v in todo.items()))
        after = t.read()
    except (TunableError, NotApplicable) as exc:
        return Outcome(entry.id, FAILED, None, entry.original, str(exc))
    if others:
        return Outcome(
            entry.id,
            LEFT,
            after,
            entry.original,
            f"{', '.join(others)} changed by someone else since apply: left as is",
        )
    if not same(after, entry.original):
        return Outcome(entry.id, FAILED, after, entry.original, "did not read back the original")
    return Outcome(
        entry.id,
        RESTORED,
        after,
        entry.original,
        "" if todo else "already the original",
        previous=entry.written if todo else None,
    )


def revert(host: Host, journal: Journal, nvml: Optional[Nvml] = None, log_results: bool = True) -> list[Outcome]:
    """Restore what the agent wrote; keep in the journal only what could not be settled (failures)."""
    entries = journal.entries()
    outcomes = [Outcome("journal", FAILED, None, None, p) for p in journal.problems]
    can_rewrite = True
    if journal.problems:
        try:
            journal.set_aside()  # the damaged lines stay readable for a person; the good ones are handled below
        except JournalError as exc:
            # Without a copy, rewriting would lose the damaged lines: leave the file as it is. Entries restored
            # now read "already the original" next time.
            outcomes.append(Outcome("journal", FAILED, None, None, f"{exc}; journal left as it is"))
            can_rewrite = False
    keep: dict[str, Entry] = {}
    for entry in entries.values():
        o = revert_one(entry, host, nvml)
        outcomes.append(o)
        if o.status == FAILED:
            keep[entry.id] = entry
    if can_rewrite:
        journal.keep_only(keep)
    for o in outcomes if log_results else ():
        (log.get().warning if o.status == FAILED else log.get().info)(
            "revert", id=o.id, status=o.status, current=o.current, original=o.desired, detail=o.message
        )
    return outcomes


def show(value: Optional[str], width: int = 48) -> str:
    """A value as a person reads it: tabs and newlines as single spaces, long values elided, no reprs."""
    if value is None:
        return "-"
    text = " ".join(value.split())
    text = "".join(c if c.isprintable() else "?" for c in text) or '""'
    return text if len(text) <= width else text[: width - 1] + "…"
