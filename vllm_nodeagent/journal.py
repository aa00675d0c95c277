"""The journal of original values: what the host had before the agent first changed it.

The first original ever seen wins: a second apply (or a drift re-apply) must never record our own value as the
"original". Every change is written to a temporary file, fsynced, and renamed over the journal, so a crash at
any point leaves the previous or the next complete journal, never a torn one. The journal is recorded *before*
the setting is written, so no change can exist that the journal does not know how to undo.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from vllm_nodeagent.host import Host, HostError

JOURNAL_NAME = "originals.json"
LOCK_NAME = "lock"
FORMAT_VERSION = 1


class JournalError(Exception):
    pass


@dataclass(frozen=True)
class Entry:
    id: str
    kind: str
    params: dict[str, str]
    original: str
    recorded_at: float


class Journal:
    def __init__(self, host: Host, state_dir: str) -> None:
        self.host = host
        self.state_dir = state_dir.rstrip("/") or "/"
        self.path = f"{self.state_dir}/{JOURNAL_NAME}"

    def entries(self) -> dict[str, Entry]:
        try:
            raw = self.host.read(self.path)
        except HostError as exc:
            if exc.errno == 2:  # ENOENT: nothing applied yet
                return {}
            raise JournalError(f"cannot read journal: {exc}") from None
        try:
            data = json.loads(raw)
            if data.get("version") != FORMAT_VERSION:
                raise JournalError(f"{self.path}: unknown journal version {data.get('version')!r}")
            return {
                k: Entry(id=k, kind=v["kind"], params=dict(v["params"]), original=v["original"],
                         recorded_at=float(v["recorded_at"]))
                for k, v in data["entries"].items()
            }
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise JournalError(f"{self.path}: corrupt journal ({exc}); refusing to guess originals") from None

    def _save(self, entries: dict[str, Entry]) -> None:
        doc: dict[str, Any] = {
            "version": FORMAT_VERSION,
            "entries": {
                e.id: {"kind": e.kind, "params": e.params, "original": e.original, "recorded_at": e.recorded_at}
                for e in entries.values()
            },
        }
        try:
            self.host.write_file_atomic(self.path, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode())
        except HostError as exc:
            raise JournalError(f"cannot write journal: {exc}") from None

    def record(self, id: str, kind: str, params: dict[str, str], original: str) -> bool:
        """Remember ``original`` unless an original for ``id`` is already kept. True when recorded now."""
        entries = self.entries()
        if id in entries:
            return False
        entries[id] = Entry(id=id, kind=kind, params=dict(params), original=original, recorded_at=time.time())
        self._save(entries)
        return True

    def forget(self, id: str) -> None:
        entries = self.entries()
        if entries.pop(id, None) is not None:
            if entries:
                self._save(entries)
            else:
                self.clear()

    def clear(self) -> None:
        try:
            self.host.remove(self.path)
        except HostError as exc:
            raise JournalError(f"cannot remove journal: {exc}") from None

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One writer at a time (the daemon and an operator's `apply` must not interleave)."""
        lock_path = self.host.path(f"{self.state_dir}/{LOCK_NAME}")
        lock_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
