"""The serving stack's learned pages (issue 23): which pages of the interpreter and its libraries a serving vLLM
had in the page cache, kept so that the next warm-up reads those and nothing else, before vLLM starts.

Why pages and not files: an import touches a small part of what it maps (measured on the CPU machine, vLLM 0.32's
API server import: 769 MB of a 3.3 GB environment, 4,276 of its .pyc files and 632 MB of its 2.2 GB of .so), and
the lent H200's cold start loses its seconds to those small random reads (docs/prewarm.md). Learned by mincore(2)
once vLLM serves (``learn_pages``), as root over the files the stack walk found; read back only for files that are
still the same inode, size and mtime (``learned_pages``), each opened again by that inode (fsafe.open_regular).
What was resident is a superset of what vLLM read (a warm-up, a compileall before): the list is bounded by the
environment, and a file changed since is left out.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Sequence
from typing import Any

from vllm_nodeagent.host import Host, paths
from vllm_nodeagent.prewarm.residency import resident_ranges
from vllm_nodeagent.prewarm.targets import WarmFile

PAGES_FILE = "stack-pages.json"
_MAX_BYTES = 64 << 20  # of the learned file we accept back (~35k files of an image's environment: a few MB)
_MAX_FILES = 400_000


def _state_file(state_dir: str) -> str:
    return state_dir.rstrip("/") + "/" + PAGES_FILE


def learn_pages(host: Host, state_dir: str, files: Sequence[WarmFile]) -> tuple[int, int]:
    """Record the resident ranges of ``files`` (the stack walk); (files kept, bytes kept). A file that cannot be
    opened as the inode the walk saw is left out."""
    kept: list[list[Any]] = []
    total = 0
    for f in files[:_MAX_FILES]:
        try:
            fd = paths.open_regular(f.real, (f.dev, f.ino))
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            ranges = resident_ranges(fd, st.st_size)
        except OSError:
            continue
        finally:
            os.close(fd)
        if ranges:
            kept.append([f.real, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, [list(r) for r in ranges]])
            total += sum(n for _, n in ranges)
    if not kept:
        return 0, 0  # nothing resident (a start that read nothing of its stack?): the last list stays
    data = json.dumps({"version": 1, "files": kept}, separators=(",", ":")).encode()
    if len(data) > _MAX_BYTES:
        raise ValueError(f"{len(kept)} files learned, {len(data)} bytes: over the {_MAX_BYTES} the reader accepts")
    # 0600: root's mincore sees residency the kernel hides from other users (residency.residency_hidden); the
    # walk's paths come from the vLLM user's sys.path, so the list may name files that user cannot read
    host.write_file_atomic(_state_file(state_dir), data, 0o600)
    return len(kept), total


def _ranges(value: Any, size: int) -> tuple[tuple[int, int], ...]:
    """Ranges inside a file of ``size`` bytes, in order and apart, as ``learn_pages`` writes them."""
    if not isinstance(value, list) or not value:
        raise ValueError("ranges")
    out: list[tuple[int, int]] = []
    for r in value:
        if not (isinstance(r, list) and len(r) == 2 and all(type(x) is int for x in r)):
            raise ValueError("range")
        first, length = r
        if first < (out[-1][0] + out[-1][1] if out else 0) or length <= 0 or first + length > size:
            raise ValueError("range")
        out.append((first, length))
    return tuple(out)


def learned_pages(host: Host, state_dir: str) -> tuple[list[WarmFile], int]:
    """The learned files, each with its ranges, that are still the file learned (same device, inode, size and
    mtime, a regular file, not a link); and how many were left out as changed. ([], 0) when nothing was learned
    or the file is not one ``learn_pages`` wrote."""
    text = host.read_or(_state_file(state_dir))
    if not text or len(text) > _MAX_BYTES:
        return [], 0
    try:
        doc = json.loads(text)
        entries = doc["files"] if isinstance(doc, dict) and doc.get("version") == 1 else None
    except (ValueError, KeyError):
        return [], 0
    if not isinstance(entries, list):
        return [], 0
    files: list[WarmFile] = []
    stale = 0
    for e in entries[:_MAX_FILES]:
        try:
            path, dev, ino, size, mtime_ns, rng = e
            if not isinstance(path, str) or not all(type(x) is int for x in (dev, ino, size, mtime_ns)):
                raise ValueError("entry")
            ranges = _ranges(rng, size)
        except (ValueError, TypeError):
            return [], 0  # not what learn_pages writes: nothing of it is trusted
        try:
            st = paths.file_stat(path, follow=False)
        except OSError:
            stale += 1
            continue
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) != (
            dev,
            ino,
            size,
            mtime_ns,
        ):
            stale += 1
            continue
        files.append(WarmFile(path, path, size, dev, ino, ranges))
    return files, stale
