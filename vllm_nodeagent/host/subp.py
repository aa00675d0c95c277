"""The one way the agent runs another program: an argv list (never a shell), a timeout, one error type.

A tool that hangs (systemctl waiting on a wedged systemd, say) must cost a timeout and a one-line error for that
one item, never an exception that escapes into the daemon's loop.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Optional


class CommandError(Exception):
    """The program could not be run or did not finish in time; the message is one line naming it."""


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


def run(
    argv: Sequence[str],
    timeout_s: float,
    env: Optional[Mapping[str, str]] = None,
    cwd: Optional[str] = None,
    user: Optional[Mapping[str, object]] = None,
) -> Result:
    """Run ``argv`` with no stdin, capturing text output; raises CommandError on a start failure or timeout.
    ``user``: subprocess's user/group/extra_groups, so the child drops privileges before exec (serving/env.py)."""
    name = os.path.basename(argv[0]) if argv else "?"
    try:
        proc = subprocess.run(  # type: ignore[call-overload]  # the user/group kwargs come as a mapping
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            close_fds=True,
            **dict(user or {}),
        )
    except subprocess.TimeoutExpired:
        shown = " ".join(" ".join(argv[1:]).split())  # one line: an inline script's newlines go
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise CommandError(f"{name} {shown}: no answer in {timeout_s:g} s (killed)") from None
    except OSError as exc:
        raise CommandError(f"{name}: cannot run: {exc.strerror or exc}") from None
    return Result(proc.returncode, proc.stdout, proc.stderr)


def without_notify(environ: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """The environment minus systemd's notify/watchdog variables: only the agent itself may talk to systemd."""
    source = os.environ if environ is None else environ
    return {k: v for k, v in source.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
