"""agent.metrics_textfile: can the agent's textfile reach node_exporter (issue 25)?

The directory must exist (the daemon creates a missing one, root 0755, where its sandbox lets it; doctor only
reports), be reachable without a symbolic link on the way (the writer refuses links: on Debian the path runs
through /var/lib/prometheus, owned by the prometheus user), be readable by node_exporter's user, and be writable
inside the root unit's sandbox (ProtectSystem=strict: a ``ReadWritePaths=`` in the unit or a drop-in must cover it).
"""

from __future__ import annotations

import errno
import os

from vllm_nodeagent.checks.base import CheckResult, Probe, Registered
from vllm_nodeagent.checks.status import Status
from vllm_nodeagent.host import dirfd
from vllm_nodeagent.host.parse import ini_assignments
from vllm_nodeagent.textfile import resolve_textfile

CHECK_ID = "agent.metrics_textfile"
UNIT = "vllm-nodeagent.service"
UNIT_DIRS = ("/lib/systemd/system", "/usr/lib/systemd/system", "/etc/systemd/system")
DROPIN = f"/etc/systemd/system/{UNIT}.d/metrics.conf"


def unit_texts(probe: Probe) -> list[str]:
    """The root unit and its drop-ins, in load order; empty when the unit is not installed here."""
    texts: list[str] = []
    for d in UNIT_DIRS:
        text = probe.host.read_or(f"{d}/{UNIT}")
        if text is not None:
            texts = [text]  # a later directory's copy replaces the earlier one
    if not texts:
        return []
    for d in UNIT_DIRS:
        for path in probe.host.glob(f"{d}/{UNIT}.d", "*.conf"):
            texts.append(probe.host.read_or(path) or "")
    return texts


def writable_paths(texts: list[str]) -> list[str]:
    """ReadWritePaths= entries (an empty assignment resets the list; a leading - or + is not part of the path)."""
    paths: list[str] = []
    for key, value in ini_assignments(texts, "Service"):
        if key != "ReadWritePaths":
            continue
        if not value:
            paths = []
            continue
        paths.extend(p.lstrip("-+") for p in value.split())
    return paths


def covered(directory: str, paths: list[str]) -> bool:
    d = directory.rstrip("/") + "/"
    return any(d.startswith(p.rstrip("/") + "/") for p in paths if p.startswith("/"))


def checks(probe: Probe) -> list[CheckResult]:
    configured = probe.config.agent.metrics_textfile
    if not configured:
        return [CheckResult(CHECK_ID, Status.SKIP, "off", None, "", "[agent] metrics_textfile is empty: no metrics")]
    path = resolve_textfile(probe.host, configured)
    directory = os.path.dirname(path)
    shown = path if configured != "auto" else f"{path} (auto)"
    install = f"install -d -m 0755 -o root -g root {directory}"
    try:
        uid, mode = dirfd.dir_owner_mode(str(probe.host.root), directory)
    except FileNotFoundError:
        return [
            CheckResult(
                CHECK_ID,
                Status.FAIL,
                shown,
                "an existing directory",
                f"{install}  (or set [agent] metrics_textfile)",
                f"{directory} is missing: node_exporter has nothing to read",
            )
        ]
    except OSError as exc:
        what = "a symbolic link on the way (refused)" if exc.errno in (errno.ELOOP, errno.ENOTDIR) else exc.strerror
        return [
            CheckResult(
                CHECK_ID,
                Status.FAIL,
                shown,
                "a real directory, no link on the way",
                f"replace the link at {exc.filename} by a directory: {install}",
                f"{exc.filename}: {what}",
            )
        ]
    if mode & 0o005 != 0o005:
        return [
            CheckResult(
                CHECK_ID,
                Status.WARN,
                f"{shown} mode {mode:04o}",
                "readable by node_exporter",
                f"chmod 0755 {directory}",
            )
        ]
    texts = unit_texts(probe)
    if texts and not covered(directory, writable_paths(texts)):
        return [
            CheckResult(
                CHECK_ID,
                Status.FAIL,
                shown,
                f"writable in {UNIT}",
                f"add {DROPIN} with [Service] ReadWritePaths={directory}, then systemctl daemon-reload "
                "(the package's Ansible role writes it)",
                f"ProtectSystem=strict keeps the agent out of {directory}: no ReadWritePaths= covers it",
            )
        ]
    owner = "root" if uid == 0 else f"uid {uid}"
    return [CheckResult(CHECK_ID, Status.PASS, shown, None, "", f"directory {owner}, mode {mode:04o}")]


CHECKS = Registered((CHECK_ID,), checks)
