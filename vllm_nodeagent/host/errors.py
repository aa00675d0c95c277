"""The error every ground-floor call raises for a host path it could not read or write."""

from __future__ import annotations

import errno
from typing import Optional


class HostError(Exception):
    """A host path could not be read or written; carries the host path and the OS error."""

    def __init__(self, op: str, path: str, err: OSError, value: Optional[str] = None) -> None:
        self.op = op
        self.path = path
        self.errno = err.errno
        self.strerror = err.strerror or str(err)
        self.value = value
        shown = f" value {value!r}" if value is not None else ""
        super().__init__(f"{op} {path}{shown}: {self.strerror} ({errno.errorcode.get(self.errno or 0, '?')})")
