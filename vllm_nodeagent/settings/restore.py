"""revert, revert --dry-run and journal show: each journal entry against what the host has now.

An entry is restored only where the live value is still what the agent wrote. One this agent cannot restore (an
unknown family, a path that is gone: a device removed, a module unloaded) is reported ``unrestorable`` and kept
in the journal until it can be, or until an operator drops it (``revert --forget ID``); it is not a failure, so
``revert`` exits 0 once everything restorable was restored. A damaged entry (bad JSON, params its family refuses)
is kept beside the journal in ``originals.json.damaged.<time>`` and dropped from it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional, Union

from vllm_nodeagent import log
from vllm_nodeagent.host import Host
from vllm_nodeagent.nvml import Nvml
from vllm_nodeagent.settings.base import MultiFileTunable, NotApplicable, Tunable, TunableError
from vllm_nodeagent.settings.engine import FAILED, LEFT, OK, RESTORED, UNTOUCHED, Outcome, same, show
from vllm_nodeagent.settings.families import UnknownFamily, rebuild
from vllm_nodeagent.settings.journal import Entry, Journal, JournalError

UNRESTORABLE = "unrestorable"  # kept in the journal: nothing this agent can write back now (not a failure)
WOULD_RESTORE = "would-restore"  # revert --dry-run: the original would be written back
FORGOTTEN = "forgotten"  # revert --forget: dropped from the journal on an operator's word, not restored

# journal show: whether what the agent wrote still holds
HOLDS, CHANGED_SINCE, GONE, UNKNOWN, UNREADABLE, LEGACY = "holds", "changed", "gone", "unknown", "unreadable", "legacy"


def forget_hint(id: str) -> str:
    return f"kept in the journal; once restored by hand (or moot): vllm-nodeagent revert --forget {id}"


@dataclass(frozen=True)
class _Damaged:
    why: str


def _writer(entry: Entry, host: Host, nvml: Optional[Nvml]) -> Union[Tunable, Outcome, _Damaged]:
    """The entry's writer; an ``unrestorable`` outcome for an unknown family; _Damaged for params its family
    refuses (damage, or a hostile line: the journal is input)."""
    try:
        return rebuild(entry.family, entry.id, entry.params, host, nvml)
    except UnknownFamily as exc:
        return Outcome(
            entry.id,
            UNRESTORABLE,
            None,
            entry.original,
            f"{exc}: this agent cannot restore it; {forget_hint(entry.id)}",
        )
    except ValueError as exc:
        return _Damaged(f"journal entry not restorable: {exc}")


def revert_one(entry: Entry, host: Host, nvml: Optional[Nvml], dry_run: bool = False) -> Outcome:
    """Restore one entry if, and only if, the live value is still what the agent wrote."""
    return _settle(entry, host, nvml, dry_run)[0]


def _settle(entry: Entry, host: Host, nvml: Optional[Nvml], dry_run: bool) -> tuple[Outcome, bool]:
    """(what revert does with the entry, whether the entry is damaged: set aside and dropped)."""
    if entry.written is None and not entry.legacy:
        return Outcome(entry.id, UNTOUCHED, None, entry.original, "found compliant at apply; never written"), False
    t = _writer(entry, host, nvml)
    if isinstance(t, _Damaged):
        return Outcome(entry.id, FAILED, None, entry.original, t.why), True
    if isinstance(t, Outcome):
        return t, False
    if getattr(t, "is_cache", False):  # vllm.bytecode: a cache of the source; the same code runs with or without it
        why = "a cache, left in place (nothing else changed)"
        return Outcome(entry.id, UNTOUCHED, None, entry.original, why), False
    if isinstance(t, MultiFileTunable) and not entry.legacy:
        return _revert_members(t, entry, dry_run), False
    return _revert_value(t, entry, dry_run), False


def _revert_value(t: Tunable, entry: Entry, dry_run: bool) -> Outcome:
    try:
        live = t.read()
    except NotApplicable as exc:
        return Outcome(entry.id, UNRESTORABLE, None, entry.original, f"{exc}; {forget_hint(entry.id)}")
    except TunableError as exc:
        return Outcome(entry.id, FAILED, None, entry.original, str(exc))
    if same(live, entry.original):
        return Outcome(entry.id, OK if dry_run else RESTORED, live, entry.original, "already the original")
    if not entry.legacy and not same(live, entry.written):
        return Outcome(
            entry.id,
            LEFT,
            live,
            entry.original,
            f"changed by someone else since apply (agent wrote {show(entry.written)}): left as is",
        )
    if dry_run:
        return Outcome(entry.id, WOULD_RESTORE, entry.original, entry.original, "", previous=live)
    try:
        t.write(entry.original)
        after = t.read()
    except (TunableError, NotApplicable) as exc:
        return Outcome(entry.id, FAILED, None, entry.original, str(exc))
    if not same(after, entry.original):
        return Outcome(entry.id, FAILED, after, entry.original, "did not read back the original")
    return Outcome(entry.id, RESTORED, after, entry.original, "", previous=live)


def _joined(values: dict[str, str]) -> str:
    distinct = set(values.values())
    return distinct.pop() if len(distinct) == 1 else " ".join(f"{k}={v}" for k, v in values.items())


def _revert_members(t: MultiFileTunable, entry: Entry, dry_run: bool) -> Outcome:
    """Per file (a governor per policy, an affinity per IRQ): a crash can leave some members written, some not,
    and a policy or an IRQ can be gone since (the rest is restored, the entry kept)."""
    try:
        original, written = t.split(entry.original), t.split(entry.written or "")
        live, gone = t.read_members()
    except TunableError as exc:
        return Outcome(entry.id, FAILED, None, entry.original, str(exc))
    mine = {m: v for m, v in live.items() if m in original and not same(v, original[m])}
    todo = {m: original[m] for m, v in mine.items() if same(v, written.get(m))}
    others = sorted(m for m in mine if m not in todo)
    gone_note = f"{len(gone)} of {len(t.paths)} gone ({_names(gone)}); {forget_hint(entry.id)}" if gone else ""
    if not live:
        return Outcome(entry.id, UNRESTORABLE, None, entry.original, gone_note)
    if dry_run:
        status = WOULD_RESTORE if todo else (UNRESTORABLE if gone else OK)
        note = "; ".join(n for n in (_others_note(others), gone_note) if n) or ("" if todo else "already the original")
        return Outcome(entry.id, status, _joined({**live, **todo}), entry.original, note, previous=_joined(live))
    try:
        if todo:
            t.write(" ".join(f"{m}={v}" for m, v in todo.items()))
        after, gone = t.read_members()
    except TunableError as exc:
        return Outcome(entry.id, FAILED, None, entry.original, str(exc))
    shown = _joined(after) if after else None
    if any(not same(after[m], original[m]) for m in after if m in original and m not in others):
        return Outcome(entry.id, FAILED, shown, entry.original, "did not read back the original")
    status = UNRESTORABLE if gone else LEFT if others else RESTORED
    note = "; ".join(n for n in (_others_note(others), gone_note) if n) or ("" if todo else "already the original")
    return Outcome(entry.id, status, shown, entry.original, note, previous=entry.written if todo else None)


def _others_note(others: list[str]) -> str:
    return f"{_names(others)} changed by someone else since apply: left as is" if others else ""


def _names(names: list[str], most: int = 8) -> str:
    shown = ", ".join(names[:most])
    return shown if len(names) <= most else f"{shown}, … ({len(names)} in all)"


def revert(
    host: Host, journal: Journal, nvml: Optional[Nvml] = None, log_results: bool = True, dry_run: bool = False
) -> list[Outcome]:
    """Restore what the agent wrote; keep in the journal what could not be settled (a failed write: tried again
    next time; an unrestorable entry: until it can be, or is forgotten). ``dry_run``: say what revert would do,
    change nothing (no write, no copy, no journal rewrite)."""
    entries = journal.entries()
    outcomes = [Outcome("journal", FAILED, None, None, p) for p in journal.problems]
    keep: dict[str, Entry] = {}
    damaged = False
    for entry in entries.values():
        o, bad = _settle(entry, host, nvml, dry_run)
        outcomes.append(o)
        if o.status in (FAILED, UNRESTORABLE) and not bad:
            keep[entry.id] = entry
        damaged = damaged or bad
    if not dry_run:
        _rewrite(journal, keep, damaged, outcomes)
    for o in outcomes if log_results else ():
        (log.get().warning if o.status == FAILED else log.get().info)(
            "revert", id=o.id, status=o.status, current=o.current, original=o.desired, detail=o.message
        )
    return outcomes


def _rewrite(journal: Journal, keep: dict[str, Entry], damaged: bool, outcomes: list[Outcome]) -> None:
    if journal.problems or damaged:
        try:
            journal.set_aside()  # the damaged lines stay readable for a person before the rewrite drops them
        except JournalError as exc:
            # Without a copy, rewriting would lose the damaged lines: leave the file as it is. Entries restored
            # now read "already the original" next time.
            outcomes.append(Outcome("journal", FAILED, None, None, f"{exc}; journal left as it is"))
            return
    journal.keep_only(keep)


@dataclass(frozen=True)
class Standing:
    """journal show: one entry, and whether what the agent wrote still holds."""

    entry: Entry
    state: str  # holds, changed, gone, untouched, unknown, unreadable, legacy
    live: Optional[str]
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        e = self.entry
        return {
            "id": e.id,
            "family": e.family,
            "state": self.state,
            "live": self.live,
            "written": e.written,
            "original": e.original,
            "recorded_at": iso_time(e.recorded_at),
            "written_at": iso_time(e.written_at),
            "detail": self.detail,
        }


def iso_time(at: Optional[float]) -> Optional[str]:
    return None if at is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def standing(entry: Entry, host: Host, nvml: Optional[Nvml]) -> Standing:
    """Read-only: the live value of a journaled setting against what the agent wrote."""
    t = _writer(entry, host, nvml)
    if isinstance(t, (Outcome, _Damaged)):
        why = t.message if isinstance(t, Outcome) else t.why
        return Standing(entry, UNKNOWN, None, why)
    try:
        if isinstance(t, MultiFileTunable):
            members, gone = t.read_members()
            live = _joined(members) if members else None
        else:
            live, gone = t.read(), []
    except NotApplicable as exc:
        return Standing(entry, GONE, None, str(exc))
    except TunableError as exc:
        return Standing(entry, UNREADABLE, None, str(exc))
    if entry.legacy:
        return Standing(entry, LEGACY, live, "a version-1 entry: what the agent wrote was not kept")
    if entry.written is None:
        return Standing(entry, UNTOUCHED, live, "found compliant at apply; never written")
    if gone:
        detail = f"{len(gone)} of {len(gone) + len(members)} gone: {_names(gone)}"
        return Standing(entry, GONE, live, detail)
    if isinstance(t, MultiFileTunable):
        try:
            written = t.split(entry.written)
        except TunableError as exc:
            return Standing(entry, UNREADABLE, live, str(exc))
        moved = sorted(m for m, v in members.items() if not same(v, written.get(m)))
        if moved:
            return Standing(entry, CHANGED_SINCE, live, f"{len(moved)} of {len(members)} changed: {_names(moved)}")
        return Standing(entry, HOLDS, live)
    if live is not None and same(live, entry.written):
        return Standing(entry, HOLDS, live)
    back = " (back to the original)" if live is not None and same(live, entry.original) else ""
    return Standing(entry, CHANGED_SINCE, live, f"changed since apply{back}")
