"""The journal: for each setting, the value the host had before the agent first changed it, and what it wrote.

The first original ever seen wins: a second apply (or a drift re-apply) must never record our own value as the
"original". Every change is written in full to a temporary file, fsynced, and renamed over the journal, so a
crash at any point leaves the previous or the next complete journal, never a torn one; a write that comes up short
(a full state filesystem) is an error, and the setting it was for is then not touched.

Format (version 3): a header line ``{"version": 3}``, then one JSON object per line per setting: its id, its
family's name and the params that family's ``rebuild`` takes, the original, what was written, and when
(``recorded_at``; ``written_at``, added within version 3 and null in older entries). One line per entry
means a damaged entry is skipped on its own (reported), and the rest can still be restored. Entries are checked
field by field on load: the journal is input too (anyone who can write the state dir writes it).

Older journals (left on hosts by an earlier version) are read and rewritten as version 3 on the next change:
version 2 is the same but for ``kind`` instead of ``family`` and the irq family's params (one path per IRQ, the
device only in the id); version 1 was one JSON document and did not keep what was written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable, Optional

from vllm_nodeagent.host import Host, HostError
from vllm_nodeagent.host.fsafe import lock_holder
from vllm_nodeagent.host.trust import Refused
from vllm_nodeagent.settings.base import MAX_MEMBERS

JOURNAL_NAME = "originals.json"
LOCK_NAME = "lock"
FORMAT_VERSION = 3
LOCK_TIMEOUT_S = 120.0
DAMAGED_SUFFIX = ".damaged"
FORGOTTEN_SUFFIX = ".forgotten"

# Limits, derived from what apply can write (issue 22) and checked by ``record`` exactly as on load, so the journal
# never refuses an entry the agent wrote: a value that would not load back is refused before the setting is
# touched (not-changed), never found unreadable at revert.
# - A multi-file setting has one member per cpufreq policy (at most NR_CPUS: 8192 is Linux's ceiling) or per
#   interrupt of one device (at most 2048 MSI-X vectors per PCI function): MAX_MEMBERS is twice the larger.
# - A value is one attribute (a page at most: 64 KiB on arm64) or the "member=value ..." form of a multi-file
#   setting, MAX_MEMBERS members of up to 64 characters ("policy12345=performance", "123456=0-55,112-167").
# - params name one member each (cpu: policy -> path), or list them (irq: up to MAX_MEMBERS numbers of 6 digits).
# - The whole journal: the largest real host (8192 policies set per policy, 64 devices x 2048 vectors) takes
#   about 6 MiB; ten times that is not a journal this agent wrote.
MAX_VALUE_CHARS = 64 * MAX_MEMBERS
MAX_PARAMS = MAX_MEMBERS + 16
MAX_PARAM_CHARS = 8 * MAX_MEMBERS
MAX_JOURNAL_BYTES = 64 << 20
_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,200}")
_PARAM_KEY = re.compile(r"[A-Za-z0-9_.:\-]{1,100}")


class JournalError(Exception):
    """The journal cannot be read, written or locked; the message is one line naming the file."""


@dataclass(frozen=True)
class Entry:
    id: str
    family: str  # the name of the settings.families entry that rebuilds it
    params: dict[str, str]
    original: str
    written: Optional[str]  # what the agent last wrote; None = found compliant, never written
    recorded_at: float  # when the original was recorded (the agent's first apply of it)
    legacy: bool = False  # a version-1 entry: what was written is unknown (revert restores unconditionally)
    written_at: Optional[float] = None  # when the agent last wrote it; None: never, or an entry from before it

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "family": self.family,
            "params": self.params,
            "original": self.original,
            "written": self.written,
            "recorded_at": self.recorded_at,
            "written_at": self.written_at,
        }


def _str_ok(value: Any, limit: int) -> bool:
    return isinstance(value, str) and len(value) <= limit and "\0" not in value


def _time_ok(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and 0 <= value < 1e11


def parse_entry(doc: Any, version: int = FORMAT_VERSION) -> Entry:
    """One entry from its JSON form (of journal format ``version``); raises ValueError naming what is wrong."""
    if not isinstance(doc, dict):
        raise ValueError("not an object")
    family_key = "family" if version >= 3 else "kind"
    for key in ("id", family_key, "params", "original", "recorded_at"):
        if key not in doc:
            raise ValueError(f"missing key {key!r}")
    if not isinstance(doc["id"], str) or not _ID.fullmatch(doc["id"]):
        raise ValueError("id is not a setting id")
    if not isinstance(doc[family_key], str) or not _PARAM_KEY.fullmatch(doc[family_key]):
        raise ValueError(f"{family_key} is not a name")
    params = doc["params"]
    if (
        not isinstance(params, dict)
        or len(params) > MAX_PARAMS
        or not all(
            isinstance(k, str) and _PARAM_KEY.fullmatch(k) and _str_ok(v, MAX_PARAM_CHARS) for k, v in params.items()
        )
    ):
        raise ValueError(f"params is not a table of at most {MAX_PARAMS} strings of {MAX_PARAM_CHARS} characters")
    if not _str_ok(doc["original"], MAX_VALUE_CHARS):
        raise ValueError(f"original is not a string of at most {MAX_VALUE_CHARS} characters")
    written = doc.get("written")
    if written is not None and not _str_ok(written, MAX_VALUE_CHARS):
        raise ValueError(f"written is not a string of at most {MAX_VALUE_CHARS} characters, or null")
    at, written_at = doc["recorded_at"], doc.get("written_at")
    if not _time_ok(at):
        raise ValueError("recorded_at is not a time")
    if written_at is not None and not _time_ok(written_at):
        raise ValueError("written_at is not a time or null")
    family, params = doc[family_key], dict(params)
    if version < 3 and family == "irq":
        params = _irq_params_before_v3(doc["id"], params)
    return Entry(
        id=doc["id"],
        family=family,
        params=params,
        original=doc["original"],
        written=written,
        recorded_at=float(at),
        legacy=version == 1,
        written_at=None if written_at is None else float(written_at),
    )


def _irq_params_before_v3(id: str, params: dict[str, str]) -> dict[str, str]:
    """Versions 1-2 kept an irq entry's device only in its id ("irq.gpu0.affinity") and one path per IRQ; the
    irq family now takes {"device", "irqs"}. Read once, on upgrade; what rebuild checks is unchanged."""
    parts = id.split(".")
    if len(parts) != 3 or parts[0] != "irq" or parts[2] != "affinity":
        raise ValueError("id is not an irq affinity id")
    for irq, path in params.items():
        if not irq.isdigit() or path != f"/proc/irq/{irq}/smp_affinity_list":
            raise ValueError(f"irq entry names a path outside /proc/irq: {path[:80]!r}")
    return {"device": parts[1], "irqs": " ".join(sorted(params, key=int))}


class Journal:
    def __init__(self, host: Host, state_dir: str) -> None:
        self.host = host
        self.state_dir = state_dir.rstrip("/") or "/"
        self.path = f"{self.state_dir}/{JOURNAL_NAME}"
        self.problems: list[str] = []  # entries skipped on the last load, one line each

    # -- load -----------------------------------------------------------------------------------------------
    def _check_dir(self) -> None:
        """Refuse a state dir others could have written (revert runs as root and acts on it); missing is fine."""
        try:
            os.close(self.host.open_dir(self.state_dir, "state dir"))
        except HostError as exc:
            if exc.errno == errno.ENOENT:
                return
            if exc.errno == errno.ENOTDIR:
                raise JournalError(
                    f"{self.state_dir}: the state dir is not a directory; set [agent] state_dir"
                ) from None
            if isinstance(exc, Refused):
                raise JournalError(str(exc)) from None
            raise JournalError(f"{self.state_dir}: cannot use the state dir: {_why(exc)}") from None

    def entries(self) -> dict[str, Entry]:
        """Every valid entry; invalid ones are listed in ``self.problems`` and left out."""
        self._check_dir()
        try:
            raw = self.host.read_file(self.path, "journal", cap=MAX_JOURNAL_BYTES)
        except HostError as exc:
            if exc.errno == errno.ENOENT:
                self.problems = []
                return {}  # nothing applied yet
            if isinstance(exc, Refused):
                raise JournalError(str(exc)) from None
            raise JournalError(f"{self.path}: cannot read the journal: {_why(exc)}") from None
        text = raw.decode("utf-8", errors="replace")
        return self._parse(text)

    def _parse(self, text: str) -> dict[str, Entry]:
        self.problems = []
        lines = text.splitlines()
        header = _load_json(lines[0]) if lines else None
        if header is None and text.lstrip().startswith("{"):
            whole = _load_json(text)  # version 1 was one indented JSON document
            if isinstance(whole, dict) and whole.get("version") == 1 and "entries" in whole:
                return self._parse_v1(whole)
        version = header.get("version") if isinstance(header, dict) else None
        if version not in (2, FORMAT_VERSION):
            raise JournalError(
                f"{self.path}: not a journal of this agent (bad header line); refusing to guess "
                "originals: move it aside and restore by hand"
            )
        out: dict[str, Entry] = {}
        for number, line in enumerate(lines[1:], 2):
            if not line.strip():
                continue
            try:
                entry = parse_entry(_load_json(line, strict=True), version)
            except ValueError as exc:
                self.problems.append(f"{self.path}:{number}: bad entry skipped: {exc}")
                continue
            out[entry.id] = entry
        return out

    def _parse_v1(self, doc: dict[str, Any]) -> dict[str, Entry]:
        out: dict[str, Entry] = {}
        items = doc["entries"]
        if not isinstance(items, dict):
            raise JournalError(f"{self.path}: corrupt version-1 journal; refusing to guess originals")
        for key, value in items.items():
            try:
                entry = parse_entry({**value, "id": key} if isinstance(value, dict) else value, version=1)
            except ValueError as exc:
                self.problems.append(f"{self.path}: entry {str(key)[:80]!r}: bad entry skipped: {exc}")
                continue
            out[entry.id] = entry
        return out

    # -- save -----------------------------------------------------------------------------------------------
    def _save(self, entries: dict[str, Entry]) -> None:
        lines = [json.dumps({"version": FORMAT_VERSION})]
        lines += [json.dumps(e.to_json(), sort_keys=True) for e in entries.values()]
        data = ("\n".join(lines) + "\n").encode()
        if len(data) > MAX_JOURNAL_BYTES:
            raise JournalError(
                f"cannot write the journal {self.path}: {len(data)} bytes is over its limit of {MAX_JOURNAL_BYTES}"
            )
        try:
            self.host.write_file_atomic(self.path, data, what="journal")
        except Refused as exc:
            raise JournalError(str(exc)) from None
        except HostError as exc:
            raise JournalError(f"cannot write the journal {self.path}: {exc.strerror}") from None

    def record(
        self, id: str, family: str, params: dict[str, str], original: str, written: Optional[str] = None
    ) -> bool:
        """Remember ``original`` unless one is already kept for ``id``, and ``written`` when given.

        Durable on return (fsynced), or JournalError: the caller must then not touch the setting. An entry that
        would not load back (over a limit) is refused here, so revert never meets an entry it cannot read. True
        when a new original was recorded now.
        """
        entries = self.entries()
        if self.problems:
            self.set_aside()  # rewriting drops the damaged lines: keep them readable beside the journal first
        old = entries.get(id)
        now = time.time()
        if old is not None:
            if written is None or written == old.written:
                return False
            new = dataclasses.replace(old, written=written, written_at=now)
        else:
            new = Entry(id, family, dict(params), original, written, now, written_at=None if written is None else now)
        try:
            parse_entry(new.to_json())
        except ValueError as exc:
            raise JournalError(f"{id}: cannot be journaled so that revert reads it back: {exc}") from None
        entries[id] = new
        self._save(entries)
        return old is None

    def set_aside(self) -> str:
        """Keep a copy of a journal with damaged entries beside it, for a person to read (revert rewrites it).

        Named by the time, never over an earlier copy: a second damaged journal keeps the first one's evidence.
        Returns the copy's host path.
        """
        try:
            raw = self.host.read_file(self.path, "journal", cap=MAX_JOURNAL_BYTES)
            return self._keep_beside(DAMAGED_SUFFIX, raw)
        except HostError as exc:
            raise JournalError(f"cannot keep a copy of the damaged journal {self.path}: {_why(exc)}") from None

    def _keep_beside(self, suffix: str, data: bytes) -> str:
        """Write ``data`` to a new ``<journal><suffix>.<UTC time>[.N]``; callers hold the lock, so no race."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        name = f"{self.path}{suffix}.{stamp}"
        n = 1
        while self.host.exists(name):
            n += 1
            name = f"{self.path}{suffix}.{stamp}.{n}"
        self.host.write_file_atomic(name, data)
        return name

    def keep_only(self, entries: dict[str, Entry]) -> None:
        """Replace the journal with ``entries`` (revert keeps those it could not settle)."""
        if entries:
            self._save(entries)
        else:
            self.clear()

    def forget(self, ids: list[str]) -> tuple[list[Entry], str]:
        """Drop entries on an operator's word (``revert --forget``): their lines are kept in a new
        ``originals.json.forgotten.<time>`` first (restoring by hand stays possible), then the journal is
        rewritten without them, durably. Returns (the entries dropped, the copy's host path); ids not in the
        journal are left to the caller to report. Callers hold the lock."""
        entries = self.entries()
        dropped = [entries[i] for i in ids if i in entries]
        if not dropped:
            return [], ""
        if self.problems:
            self.set_aside()
        lines = [json.dumps({"version": FORMAT_VERSION})] + [json.dumps(e.to_json(), sort_keys=True) for e in dropped]
        try:
            kept_at = self._keep_beside(FORGOTTEN_SUFFIX, ("\n".join(lines) + "\n").encode())
        except HostError as exc:
            raise JournalError(f"cannot keep the forgotten entries beside {self.path}: {exc.strerror}") from None
        self.keep_only({i: e for i, e in entries.items() if i not in ids})
        return dropped, kept_at

    def clear(self) -> None:
        try:
            self.host.remove(self.path)
        except HostError as exc:
            raise JournalError(f"cannot remove the journal {self.path}: {exc.strerror}") from None

    # -- lock -----------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(
        self,
        timeout_s: Optional[float] = None,
        on_wait: Optional[Callable[[str], None]] = None,
        cancelled: Optional[Callable[[], bool]] = None,
    ) -> Iterator[None]:
        """One writer at a time (the daemon and an operator's `apply` must not interleave).

        When another process holds the lock, ``on_wait`` is told who (once); after ``timeout_s`` JournalError,
        and at once when ``cancelled()`` says so (the daemon got SIGTERM while it waited).
        """
        lock_host_path = f"{self.state_dir}/{LOCK_NAME}"
        self._check_dir()
        try:
            fd = self.host.open_lock(lock_host_path, "journal lock")
        except Refused as exc:
            raise JournalError(str(exc)) from None
        except HostError as exc:
            raise JournalError(f"{self.state_dir}: cannot use the state dir: {_why(exc)}") from None
        try:
            self._acquire(fd, lock_host_path, LOCK_TIMEOUT_S if timeout_s is None else timeout_s, on_wait, cancelled)
            yield
        finally:
            os.close(fd)

    def _acquire(
        self,
        fd: int,
        shown: str,
        timeout_s: float,
        on_wait: Optional[Callable[[str], None]],
        cancelled: Optional[Callable[[], bool]] = None,
    ) -> None:
        deadline = time.monotonic() + timeout_s
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _holder(fd)
                if not told and on_wait is not None:
                    on_wait(f"waiting for {shown}, held by {holder} (giving up after {timeout_s:g} s)")
                    told = True
                if cancelled is not None and cancelled():
                    raise JournalError(f"stopped while waiting for {shown} (held by {holder})") from None
                if time.monotonic() >= deadline:
                    raise JournalError(
                        f"{shown} is held by {holder}; gave up after {timeout_s:g} s "
                        "(another apply, revert or the daemon is working: try again)"
                    ) from None
                time.sleep(0.1)
        # Who holds it, for the next waiter's message. Best effort: a full state fs must not stop the work.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def _holder(fd: int) -> str:
    """Who holds the lock: the kernel's word (/proc/locks) first; the pid a holder wrote only where the kernel
    shows none (another pid namespace), since a finished run's pid stays in the file."""
    pid = lock_holder(fd)
    if pid is not None:
        return f"pid {pid}"
    try:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return f"pid {text}" if text.isdigit() else "another process"


def _load_json(line: str, strict: bool = False) -> Any:
    try:
        return json.loads(line)
    except RecursionError:  # a nested-list bomb: the C decoder gives up on depth
        if strict:
            raise ValueError("nested too deeply") from None
        return None
    except ValueError as exc:
        if strict:
            raise ValueError(f"not JSON ({exc})") from None
        return None


def _why(exc: BaseException) -> str:
    if isinstance(exc, HostError):
        return exc.strerror
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc} ({errno.errorcode.get(exc.errno or 0, '?')})"
    return str(exc)
