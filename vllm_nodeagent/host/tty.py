"""What reaches the operator's terminal. A value the agent shows may come from a file someone else wrote (a
``--root`` tree's kernel file, a journal entry, a process's name): an ESC sequence there could clear the screen,
rewrite earlier lines or set the terminal's title. Every write of a command to stdout/stderr goes through
``Printable``: C0 controls other than newline and tab, DEL, C1 and U+2028/2029 are shown escaped (``\\x1b``); the
agent's own colour (SGR, ``ESC [ n;... m``) passes."""

from __future__ import annotations

import re
from typing import Any, TextIO

_SHOWN = re.compile("\x1b\\[[0-9;]*m|[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def printable(text: str) -> str:
    """``text`` with every control character but newline, tab and an SGR colour sequence escaped."""
    return _SHOWN.sub(lambda m: m.group() if len(m.group()) > 1 else m.group().encode("unicode_escape").decode(), text)


class Printable:
    """A text stream that writes ``printable(s)`` to ``inner``; everything else is the inner stream's."""

    def __init__(self, inner: TextIO) -> None:
        self._inner = inner

    def write(self, s: str) -> int:
        self._inner.write(printable(s))
        return len(s)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)
