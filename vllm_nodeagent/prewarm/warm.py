"""The prewarm step: resolve the targets, take what fits the budget, measure residency, read what is not
resident, measure again, and optionally lock the pages; ``PrewarmResult`` is what it did.

Library API (used by the daemon, the serve unit and the ``prewarm`` command)::

    prewarm(targets, *, host, budget_bytes, threads=0, lock=False, progress=None, hf_cache=None) -> PrewarmResult
    targets.budget_from_config(host, fraction) -> int
    targets.parse_budget(text, host) -> int               # "64G", "1073741824", "0.5"; raises BudgetError
    targets.config_targets(config) -> (targets, env)      # [prewarm] paths + [vllm] model, HF env merged
    targets.hf_cache_dir(env=None) -> str
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from vllm_nodeagent import log
from vllm_nodeagent.host import Host, paths
from vllm_nodeagent.prewarm.mlock import LockedPages, lock_failure_message
from vllm_nodeagent.prewarm.reader import (
    FileHook,
    ProgressFn,
    ReaderOptions,
    _Progress,
    default_threads,
    describe_reader,
    main_storage,
    read_files,
    reader_for,
)
from vllm_nodeagent.prewarm.residency import HIDDEN, Residency, resident_bytes, resident_ranges
from vllm_nodeagent.prewarm.targets import WarmFile, apply_budget, resolve_targets


@dataclass
class PrewarmResult:
    files: int = 0
    total_bytes: int = 0
    resident_before_bytes: int = 0
    resident_after_bytes: int = 0
    read_bytes: int = 0
    seconds: float = 0.0
    gbps: float = 0.0
    errors: list[str] = field(default_factory=list)
    skipped: list[tuple[str, int]] = field(default_factory=list)  # (path, size) left out by the budget
    budget_bytes: Optional[int] = None
    threads: int = 0
    residency_method: str = ""
    reader: str = ""  # the reader design and the storage it was picked for
    paths: list[str] = field(default_factory=list)
    locked: Optional[LockedPages] = None
    stack_files: int = 0  # of ``files``: the interpreter and libraries, warmed before the weights (issue 23)
    stack_bytes: int = 0
    stack_resident_after_bytes: int = 0
    reclaimed_bytes: int = 0  # given back by the page cache during the read, found after it (read once more)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def resident_fraction(self) -> float:
        return self.resident_after_bytes / self.total_bytes if self.total_bytes else 1.0

    @property
    def skipped_bytes(self) -> int:
        return sum(size for _, size in self.skipped)

    def to_json(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "total_bytes": self.total_bytes,
            "resident_before_bytes": self.resident_before_bytes,
            "resident_after_bytes": self.resident_after_bytes,
            "seconds": round(self.seconds, 3),
            "gbps": round(self.gbps, 3),
            "read_bytes": self.read_bytes,
            "resident_fraction": round(self.resident_fraction, 6),
            "budget_bytes": self.budget_bytes,
            "skipped": [{"path": p, "bytes": s} for p, s in self.skipped],
            "skipped_bytes": self.skipped_bytes,
            "errors": list(self.errors),
            "threads": self.threads,
            "reader": self.reader,
            "residency_method": self.residency_method,
            "locked_bytes": self.locked.bytes if self.locked is not None else 0,
            "paths": list(self.paths),
            "stack_files": self.stack_files,
            "stack_bytes": self.stack_bytes,
            "stack_resident_after_bytes": self.stack_resident_after_bytes,
            "reclaimed_bytes": self.reclaimed_bytes,
        }


def _oserr(exc: OSError) -> str:
    return str(exc.strerror or exc)


# The page cache may give back what was just read (reclaim on a busy node): what is short by at most this share
# of the bytes wanted is read once more. More than that is a set the memory cannot hold: re-reading it would
# only evict the rest again, so it is reported as it is.
_READ_AGAIN_SHARE = 0.10


def _residency_after(res: Residency, files: Sequence[WarmFile], file_errors: dict[str, str]) -> dict[str, int]:
    """Resident bytes (or HIDDEN) of each file after the read; a file gone or unreadable gets its error."""
    out: dict[str, int] = {}
    for f in files:
        try:
            after = resident_bytes(res, f)
        except OSError as exc:
            file_errors.setdefault(f.path, f"{f.path}: residency after the read: {_oserr(exc)}")
            continue
        if after is None:
            file_errors.setdefault(f.path, f"{f.path}: vanished during prewarm")
            continue
        out[f.path] = after
    return out


def _read_again(
    res: Residency,
    short: Sequence[WarmFile],
    after_of: dict[str, int],
    wanted: int,
    opts: ReaderOptions,
    file_errors: dict[str, str],
    result: PrewarmResult,
    progress: Optional[ProgressFn],
    refused: list[str],
) -> bool:
    """Read once more what of ``short`` the page cache gave back during the read (``wanted``: the bytes of all
    files measured); whether it was read (the progress callback keeps the watchdog fed meanwhile)."""
    missing = sum(f.want - after_of[f.path] for f in short)
    result.reclaimed_bytes = missing
    fits = missing <= _READ_AGAIN_SHARE * wanted
    log.get().warning(
        "prewarm.reclaimed",
        files=len(short),
        missing_bytes=missing,
        read_again=fits,
        detail="the page cache gave back pages read moments before"
        + ("; their ranges read once more" if fits else "; more than the memory holds beside the rest: not read again"),
    )
    if not fits:
        return False
    again = [g for g in (_only_missing(f) for f in short) if g is not None]
    prog = _Progress(sum(f.want for f in again), progress)
    t0 = time.monotonic()
    result.read_bytes += read_files(again, opts, prog, file_errors, None, refused)
    result.seconds += time.monotonic() - t0
    prog.finish()
    return True


def _only_missing(f: WarmFile) -> Optional[WarmFile]:
    """The file with, as its ranges, what of it (its ranges, else all of it) is not in the page cache now (by
    mincore: a 4 GB shard 6 MiB short is read for 6 MiB, not 4 GB); None when nothing is missing any more. Where
    the pages cannot be mapped, the file as it is (read it all again)."""
    try:
        fd = paths.open_regular(f.real, (f.dev, f.ino))
    except OSError:
        return f  # the read reports it
    try:
        held = resident_ranges(fd, f.size, join_pages=0)
    except OSError:
        return f
    finally:
        os.close(fd)
    gaps: list[tuple[int, int]] = []
    for first, length in f.ranges or ((0, f.size),):
        at, end = first, first + length
        for a, n in held:
            if a + n <= at or a >= end:
                continue
            if a > at:
                gaps.append((at, a - at))
            at = max(at, a + n)
        if at < end:
            gaps.append((at, end - at))
    return dataclasses.replace(f, ranges=tuple(gaps)) if gaps else None


def prewarm(
    targets: Sequence[str],
    *,
    host: Host,
    budget_bytes: Optional[int],
    threads: int = 0,
    lock: bool = False,
    progress: Optional[ProgressFn] = None,
    hf_cache: Optional[str] = None,
    residency: Optional[str] = None,
    reader: Optional[ReaderOptions] = None,
    stack: Sequence[WarmFile] = (),
    io_priority: str = "",
    _file_hook: Optional[FileHook] = None,
) -> PrewarmResult:
    """Warm ``targets`` into the page cache, largest file first, within ``budget_bytes`` (None = no limit).

    ``host`` is the seam through which the storage under the files is read (sysfs, mountinfo) to pick the reader
    (``reader_for``) unless ``reader`` is given; targets are data paths, not re-rooted. ``residency``: "auto"
    (cachestat, else mincore), "cachestat" or "mincore"; None reads ``$VLLM_NODEAGENT_RESIDENCY``.
    ``_file_hook(path)`` runs before each file is first read (tests only).
    ``stack``: the serving stack's files (prewarm/stack.py), read first and counted first against the budget:
    what vLLM reads first, and small next to the weights.
    ``io_priority``: "low" or "idle" for the reader threads (prewarm/ioprio.py; "" = this process's own).
    Never raises for bad targets or files: each problem is one line in ``errors`` and the rest is warmed.
    """
    logger = log.get()
    res = Residency(residency)
    result = PrewarmResult(budget_bytes=budget_bytes)
    files, errs = resolve_targets(targets, hf_cache) if targets else ([], [])
    result.errors.extend(errs)
    stack_keys = {(f.dev, f.ino) for f in stack}
    files = [*stack, *(f for f in files if (f.dev, f.ino) not in stack_keys)]
    taken, skipped = apply_budget(files, budget_bytes, first=len(stack))
    result.skipped = [(f.path, f.want) for f in skipped]
    if skipped:
        logger.warning(
            "prewarm.budget",
            budget_bytes=budget_bytes,
            skipped_files=len(skipped),
            skipped_bytes=result.skipped_bytes,
            warmed_bytes=sum(f.want for f in taken),
        )
    file_errors: dict[str, str] = {}
    before: dict[str, int] = {}
    hidden: set[str] = set()
    for f in taken:
        try:
            r = resident_bytes(res, f)
        except OSError as exc:
            file_errors[f.path] = f"{f.path}: cannot open: {_oserr(exc)}"
            continue
        if r is None:
            file_errors[f.path] = f"{f.path}: vanished before it was read"
            continue
        if r == HIDDEN:  # unknown: read it all rather than trust the kernel's "all resident"
            hidden.add(f.path)
            r = 0
        before[f.path] = r
    if hidden:
        logger.warning(
            "prewarm.residency_hidden",
            files=len(hidden),
            uid=os.geteuid(),
            detail="the kernel reports files this user neither owns nor may write as fully cached: "
            "read in full, residency not measured",
        )
    to_read = [f for f in taken if f.path in before and before[f.path] < f.want]
    storage = main_storage(host, [f for f in taken if f.path in before])
    opts = reader or reader_for(storage)
    if threads:
        opts = dataclasses.replace(opts, threads=threads)
    if io_priority:
        opts = dataclasses.replace(opts, io_priority=io_priority)
    result.threads = default_threads(opts.threads)
    result.reader = f"{describe_reader(opts)} on {storage.describe()}"
    prog = _Progress(sum(f.want for f in to_read), progress)
    refused: list[str] = []  # the reader threads' refused ioprio_set, said once per prewarm
    t0 = time.monotonic()
    result.read_bytes = read_files(to_read, opts, prog, file_errors, _file_hook, refused)
    result.seconds = time.monotonic() - t0
    prog.finish()
    measured = [f for f in taken if f.path in before]
    after_of = _residency_after(res, measured, file_errors)
    excluded = hidden | set(file_errors)
    short = [f for f in measured if f.path in after_of and f.path not in excluded and after_of[f.path] < f.want]
    wanted = sum(f.want for f in measured)
    if short and _read_again(res, short, after_of, wanted, opts, file_errors, result, progress, refused):
        after_of = _residency_after(res, measured, file_errors)  # all of them: the second read may evict others
    result.gbps = result.read_bytes / result.seconds / 1e9 if result.seconds > 0 else 0.0
    if refused:
        result.reader += f" (I/O priority refused: {refused[0]})"
    for f in measured:
        if f.path not in after_of:
            continue
        after = after_of[f.path]
        if after == HIDDEN:
            after = 0 if f.path in file_errors else f.want  # read in full without error; not measured
        try:
            now_size = paths.file_stat(f.real).st_size
        except OSError:
            now_size = f.size
        if now_size < f.size:
            file_errors.setdefault(f.path, f"{f.path}: file shrank during prewarm ({f.size} -> {now_size} bytes)")
        if f.path in file_errors:
            continue
        result.files += 1
        result.total_bytes += f.want
        result.resident_before_bytes += before[f.path]
        result.resident_after_bytes += after
        result.paths.append(f.path)
        if (f.dev, f.ino) in stack_keys:
            result.stack_files += 1
            result.stack_bytes += f.want
            result.stack_resident_after_bytes += after
    result.errors.extend(file_errors[f.path] for f in taken if f.path in file_errors)
    result.residency_method = res.method + (f" (hidden for {len(hidden)} file(s): counted as read)" if hidden else "")
    if lock:
        locked = LockedPages()
        for f in taken:
            if f.path in file_errors:
                continue
            try:
                locked.lock_file(f.real, (f.dev, f.ino))
            except OSError as exc:
                locked.release()
                result.errors.append(lock_failure_message(f.path, exc))
                break
        else:
            result.locked = locked
    logger.info(
        "prewarm.done",
        files=result.files,
        total_bytes=result.total_bytes,
        resident_before_bytes=result.resident_before_bytes,
        resident_after_bytes=result.resident_after_bytes,
        seconds=round(result.seconds, 3),
        gbps=round(result.gbps, 3),
        errors=len(result.errors),
        method=result.residency_method,
        reader=result.reader,
    )
    return result
