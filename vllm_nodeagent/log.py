"""Logging: JSON lines for journald, a console renderer on a terminal.

Two backends write the same lines. The daemon (``structured=True``) uses structlog. One-shot commands (doctor,
topology, apply, prewarm, launch) use the small renderer below, because ``import structlog`` pulls in asyncio and
ssl (~45 ms, a third of a one-shot command's start-up) and those commands log a few lines at most. structlog is
imported on the first line the daemon logs, never at import time.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Optional, TextIO

# The stdlib logging levels, without importing logging for four integers.
DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40
_LEVELS = {"debug": DEBUG, "info": INFO, "warning": WARNING, "error": ERROR}


class _Settings:
    fmt = "auto"
    stream: Optional[TextIO] = None  # None: whatever sys.stderr is when a line is logged
    level = INFO
    structured = False
    applied_to: Optional[TextIO] = None  # the stream structlog.configure() last ran with


def configure(fmt: str = "auto", stream: Optional[TextIO] = None, level: int = INFO, structured: bool = False) -> None:
    """``fmt``: auto (console; the daemon: console on a TTY, else JSON), console, or json. Logs go to ``stream``
    (default: sys.stderr as it is when a line is logged); stdout is for results. ``structured``: render through
    structlog (the daemon)."""
    _Settings.fmt = fmt
    _Settings.stream = stream
    _Settings.level = level
    _Settings.structured = structured
    _Settings.applied_to = None


def _use_json(stream: TextIO) -> bool:
    # "auto": JSON off a terminal only for the daemon (journald keeps the fields); a one-shot command writes
    # console lines wherever stderr goes (`doctor 2>&1 | less` stays one format), JSON only when asked.
    return _Settings.fmt == "json" or (_Settings.fmt == "auto" and _Settings.structured and not stream.isatty())


def _apply_structlog(stream: TextIO) -> None:
    import structlog

    renderer: Any = (
        structlog.processors.JSONRenderer() if _use_json(stream) else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_Settings.level),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    _Settings.applied_to = stream


def _timestamp() -> str:
    """ISO 8601 UTC with microseconds and a Z, as structlog's TimeStamper(fmt="iso", utc=True) writes it."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"


def render_line(method: str, event: str, kw: dict[str, Any], as_json: bool) -> str:
    """One log line as structlog renders it: JSON (fields, event, level, timestamp) or ``ts [level] event k=v``."""
    if as_json:
        return json.dumps({**kw, "event": event, "level": method, "timestamp": _timestamp()}, default=repr)
    fields = " ".join(f"{k}={v!r}" for k, v in sorted(kw.items()))
    return f"{_timestamp()} [{method:<9s}] {event:<30s} {fields}".rstrip()


class Logger:
    """A named logger: structlog in the daemon (imported on first use), the small renderer otherwise."""

    def __init__(self, name: str) -> None:
        self.name = name

    def _emit(self, method: str, event: str, kw: dict[str, Any]) -> None:
        if _LEVELS[method] < _Settings.level:
            return
        stream = _Settings.stream if _Settings.stream is not None else sys.stderr
        if not _Settings.structured:
            stream.write(render_line(method, event, kw, _use_json(stream)) + "\n")
            stream.flush()
            return
        if _Settings.applied_to is not stream:
            _apply_structlog(stream)
        import structlog

        getattr(structlog.get_logger(self.name), method)(event, **kw)

    def debug(self, event: str, **kw: Any) -> None:
        self._emit("debug", event, kw)

    def info(self, event: str, **kw: Any) -> None:
        self._emit("info", event, kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._emit("warning", event, kw)

    def error(self, event: str, **kw: Any) -> None:
        self._emit("error", event, kw)


def get(name: str = "vllm-nodeagent") -> Logger:
    return Logger(name)
