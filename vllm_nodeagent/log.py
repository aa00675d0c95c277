"""structlog setup: JSON lines for journald, a console renderer on a terminal."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog


def configure(fmt: str = "auto", stream: TextIO = sys.stderr, level: int = logging.INFO) -> None:
    """``fmt``: auto (console on a TTY, else JSON), console, or json. Logs go to stderr; stdout is for results."""
    use_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    renderer: Any = structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def get(name: str = "vllm-nodeagent") -> Any:
    return structlog.get_logger(name)
