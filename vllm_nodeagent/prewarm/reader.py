"""Page-cache prewarm: resolve targets, read them in parallel at disk speed, prove residency.

Library API (used by the daemon)::

    prewarm(targets, *, host, budget_bytes, threads=0, lock=False, progress=None, hf_cache=None) -> PrewarmResult
    budget_from_config(host, fraction) -> int
    parse_budget(text, host) -> int                       # "64G", "1073741824", "0.5"; raises BudgetError
    config_targets(config) -> (targets, env)              # [prewarm] paths + [vllm] model, HF env merged
    hf_cache_dir(env=None) -> str

Targets are data paths, not host configuration: they are used as given (not re-rooted under ``--root``).
Only /proc/meminfo (the budget) is read through the Host seam.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import mmap
import os
import re
import signal
import stat
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional

from vllm_nodeagent import log
from vllm_nodeagent.host import Host, HostError
from vllm_nodeagent.parse import ParseError, parse_meminfo
from vllm_nodeagent.prewarm.residency import LockedPages, Residency
from vllm_nodeagent.storage import Storage, storage_of

if TYPE_CHECKING:
    from vllm_nodeagent.config import Config
    from vllm_nodeagent.context import Context

ProgressFn = Callable[[int, int], None]
FileHook = Callable[[str], None]

# What vLLM reads at start: weights, configs, tokenizers, chat templates.
WANTED_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".json", ".model", ".tiktoken", ".jinja")
WANTED_NAMES = frozenset({"vocab.txt", "merges.txt", "tokenizer.model", "spiece.model", "vocab.json"})

_MADV_POPULATE_READ = 22  # Linux >= 5.14; Python 3.9's mmap module does not name it
_HF_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9][A-Za-z0-9_.\-]*)?(@[A-Za-z0-9_.\-/]+)?")
_COMMIT = re.compile(r"[0-9a-f]{40}")


class BudgetError(ValueError):
    """A --budget value that is neither a byte count nor a fraction in (0, 1]."""


# -- reader design -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReaderOptions:
    """How files are read. ``reader_for`` picks one per storage kind from bench/prewarm.py (docs/prewarm.md).

    method: "pread" (preadv into one reused buffer per thread), "sendfile" (sendfile(2) to /dev/null, no copy to
    user space; buffer_bytes is the chunk per call) or "populate" (mmap + MADV_POPULATE_READ).
    segment_bytes: files are cut into segments of this size that threads take in order (0 = whole files).
    fadvise: "none", "seq" (POSIX_FADV_SEQUENTIAL) or "seq+willneed" (also WILLNEED on the segment).
    ahead_bytes: keep POSIX_FADV_WILLNEED this far ahead of the read position (0 = the kernel's readahead only).
    """

    threads: int = 0
    buffer_bytes: int = 64 << 20
    segment_bytes: int = 256 << 20
    fadvise: str = "seq"
    method: str = "sendfile"
    ahead_bytes: int = 0


# Parallel streams over segments: NVMe, virtio, SSDs, network filesystems, unknown (storage.Storage.parallel).
PARALLEL_READER = ReaderOptions(threads=4, buffer_bytes=64 << 20, segment_bytes=256 << 20)
# One sequential stream, files in turn: spinning disks (a switch between streams is a seek) and memory.
SEQUENTIAL_READER = ReaderOptions(threads=1, buffer_bytes=64 << 20, segment_bytes=0)


def reader_for(storage: Storage) -> ReaderOptions:
    return PARALLEL_READER if storage.parallel else SEQUENTIAL_READER


DEFAULT_THREADS = 4
_PREAD_BUFFER_MAX = 8 << 20


def default_threads(requested: int = 0) -> int:
    """Reads are I/O-bound (the syscalls drop the GIL): queue depth matters more than cores."""
    return requested if requested > 0 else DEFAULT_THREADS


# -- result ---------------------------------------------------------------------------------------------
@dataclass
class WarmFile:
    path: str  # the path as found (a snapshot link, or the file)
    real: str  # the file read (the blob)
    size: int
    dev: int
    ino: int


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
        }


# -- budget ---------------------------------------------------------------------------------------------
_SUFFIX = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def mem_available(host: Host) -> int:
    """MemAvailable from /proc/meminfo (via the Host seam), in bytes; raises HostError/ParseError/KeyError."""
    return parse_meminfo(host.read("/proc/meminfo"))["MemAvailable"]


def budget_from_config(host: Host, fraction: float) -> int:
    """``fraction`` of MemAvailable, in bytes."""
    if not 0 < fraction <= 1:
        raise BudgetError(f"budget fraction must be in (0, 1], got {fraction}")
    return int(mem_available(host) * fraction)


def parse_budget(text: str, host: Host) -> int:
    """A byte count ("64G", "512M", "1073741824"; K/M/G/T are powers of 1024, optional "i"/"B") or a fraction of
    MemAvailable written with a decimal point ("0.5", "1.0"). Raises BudgetError with a one-line message."""
    s = text.strip()
    if "." in s:
        try:
            frac = float(s)
        except ValueError:
            raise BudgetError(f"--budget {text!r}: expected bytes (e.g. 64G) or a fraction in (0, 1]") from None
        if not 0 < frac <= 1:
            raise BudgetError(f"--budget {text!r}: a fraction must be in (0, 1]")
        try:
            return budget_from_config(host, frac)
        except (HostError, ParseError, KeyError) as exc:
            raise BudgetError(f"--budget {text!r}: cannot read MemAvailable: {exc}") from None
    m = re.fullmatch(r"(\d+)\s*([KMGTkmgt]?)(?:i?[Bb])?", s)
    if not m:
        raise BudgetError(f"--budget {text!r}: expected bytes (e.g. 64G) or a fraction in (0, 1]")
    value = int(m.group(1)) * _SUFFIX[m.group(2).upper()]
    if value <= 0:
        raise BudgetError(f"--budget {text!r}: must be positive")
    return value


# -- target resolution ----------------------------------------------------------------------------------
def hf_cache_dir(env: Optional[Mapping[str, str]] = None) -> str:
    """The Hugging Face hub cache, as huggingface_hub finds it: HF_HUB_CACHE, HUGGINGFACE_HUB_CACHE (legacy),
    HF_HOME/hub, XDG_CACHE_HOME/huggingface/hub, ~/.cache/huggingface/hub."""
    e = os.environ if env is None else env
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if e.get(key):
            return os.path.expanduser(e[key])
    if e.get("HF_HOME"):
        return os.path.join(os.path.expanduser(e["HF_HOME"]), "hub")
    if e.get("XDG_CACHE_HOME"):
        return os.path.join(os.path.expanduser(e["XDG_CACHE_HOME"]), "huggingface", "hub")
    return os.path.join(os.path.expanduser("~"), ".cache", "huggingface", "hub")


def config_targets(config: Config) -> tuple[list[str], dict[str, str]]:
    """Targets from ``[prewarm] paths`` (+ ``[vllm] model`` when include_model) and the environment to resolve
    model ids in: the process environment overlaid with ``[vllm] env`` (vLLM looks where its env says)."""
    targets: list[str] = []
    env = dict(os.environ)
    if config.prewarm is not None:
        targets.extend(config.prewarm.paths)
    include_model = config.prewarm.include_model if config.prewarm is not None else True
    if config.vllm is not None:
        env.update(config.vllm.env)
        if include_model and config.vllm.model and config.vllm.model not in targets:
            targets.append(config.vllm.model)
    return targets, env


def wanted(name: str) -> bool:
    return name in WANTED_NAMES or name.endswith(WANTED_SUFFIXES)


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _hf_repo_root(directory: str) -> Optional[str]:
    """For a directory inside an HF cache (``.../models--X--Y/snapshots/<rev>/...``) the cache root."""
    parts = directory.rstrip("/").split("/")
    for i in range(len(parts) - 2, 0, -1):
        if parts[i] == "snapshots" and parts[i - 1].startswith("models--"):
            return "/".join(parts[: i - 1]) or "/"
    return None


class _Collector:
    def __init__(self) -> None:
        self.files: list[WarmFile] = []
        self.errors: list[str] = []
        self._seen: set[tuple[int, int]] = set()

    def add(self, shown: str, real: str) -> None:
        try:
            st = os.stat(real)
        except OSError as exc:
            self.errors.append(f"{shown}: {exc.strerror or exc}")
            return
        if not stat.S_ISREG(st.st_mode):
            self.errors.append(f"{shown}: not a regular file")
            return
        key = (st.st_dev, st.st_ino)
        if key in self._seen:  # each blob once, however many snapshots link to it
            return
        self._seen.add(key)
        self.files.append(WarmFile(shown, real, st.st_size, st.st_dev, st.st_ino))

    def walk(self, top: str, allowed_root: str) -> int:
        """Add the wanted files under ``top``; links are followed only when they stay inside ``allowed_root``."""
        found = 0

        def onerror(exc: OSError) -> None:
            self.errors.append(f"{exc.filename}: {exc.strerror or exc}")

        for dirpath, dirnames, filenames in os.walk(top, onerror=onerror):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if not wanted(name):
                    continue
                shown = os.path.join(dirpath, name)
                real = os.path.realpath(shown)
                if not _within(real, allowed_root):
                    self.errors.append(f"{shown}: refusing link to {real}, outside {allowed_root}")
                    continue
                self.add(shown, real)
                found += 1
        return found


def resolve_hf(model_id: str, cache: str) -> tuple[str, str]:
    """(snapshot directory, allowed root) of a model id in the local HF cache, offline. Raises LookupError."""
    name, _, revision = model_id.partition("@")
    repo = os.path.join(cache, "models--" + name.replace("/", "--"))
    if not os.path.isdir(repo):
        raise LookupError(f"{model_id}: not a path, and not in the Hugging Face cache {cache} (resolved offline)")
    rev = revision or "main"
    commit = ""
    ref = os.path.join(repo, "refs", rev)
    if os.path.isfile(ref):
        with open(ref, encoding="utf-8") as f:
            commit = f.read().strip()
    elif _COMMIT.fullmatch(rev):
        commit = rev
    else:
        snaps = sorted(os.listdir(os.path.join(repo, "snapshots"))) if os.path.isdir(
            os.path.join(repo, "snapshots")) else []
        if not revision and len(snaps) == 1:
            commit = snaps[0]
        else:
            raise LookupError(f"{model_id}: no refs/{rev} in {repo} (snapshots: {', '.join(snaps) or 'none'})")
    if "/" in commit or not commit or commit in (".", ".."):
        raise LookupError(f"{model_id}: bad revision {commit!r} in {ref}")
    snapshot = os.path.join(repo, "snapshots", commit)
    if not os.path.isdir(snapshot):
        raise LookupError(f"{model_id}: snapshot {snapshot} is missing (incomplete download?)")
    return snapshot, os.path.realpath(cache)


def resolve_targets(targets: Sequence[str], hf_cache: Optional[str] = None) -> tuple[list[WarmFile], list[str]]:
    """The files to warm (largest first, each inode once) and one message per target problem."""
    cache = hf_cache or hf_cache_dir()
    col = _Collector()
    for target in targets:
        if os.path.lexists(target):
            if os.path.isdir(target):
                real_top = os.path.realpath(target)
                allowed = _hf_repo_root(real_top) or _hf_repo_root(os.path.abspath(target)) or real_top
                if col.walk(target, os.path.realpath(allowed)) == 0:
                    col.errors.append(f"{target}: no model files found (weights, configs, tokenizer)")
            else:
                col.add(target, os.path.realpath(target))  # an explicitly named file is read wherever it lies
        elif _HF_ID.fullmatch(target) and not target.startswith(("/", ".")):
            try:
                snapshot, allowed = resolve_hf(target, cache)
            except (LookupError, OSError) as exc:
                col.errors.append(str(exc))
                continue
            if col.walk(snapshot, allowed) == 0:
                col.errors.append(f"{target}: snapshot {snapshot} holds no model files")
        else:
            col.errors.append(f"{target}: no such file or directory")
    col.files.sort(key=lambda f: (-f.size, f.path))
    return col.files, col.errors


def apply_budget(files: list[WarmFile], budget: Optional[int]) -> tuple[list[WarmFile], list[WarmFile]]:
    """Largest first, take each file that still fits; a file never partly. Returns (taken, skipped)."""
    if budget is None:
        return list(files), []
    taken: list[WarmFile] = []
    skipped: list[WarmFile] = []
    left = budget
    for f in files:
        if f.size <= left:
            taken.append(f)
            left -= f.size
        else:
            skipped.append(f)
    return taken, skipped


# -- the reader -----------------------------------------------------------------------------------------
class _Progress:
    def __init__(self, total: int, fn: Optional[ProgressFn], interval: float = 0.1) -> None:
        self.total = total
        self.done = 0
        self._fn = fn
        self._interval = interval
        self._last = 0.0
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n
            now = time.monotonic()
            if self._fn is None or now - self._last < self._interval:
                return
            self._last = now
            done = self.done
        self._fn(done, self.total)

    def finish(self) -> None:
        if self._fn is not None:
            self._fn(self.done, self.total)


@dataclass
class _Segment:
    file: WarmFile
    start: int
    length: int


def _segments(files: Sequence[WarmFile], segment_bytes: int) -> list[_Segment]:
    out: list[_Segment] = []
    for f in files:
        step = segment_bytes if segment_bytes > 0 else max(f.size, 1)
        for start in range(0, max(f.size, 1), step):
            out.append(_Segment(f, start, min(step, f.size - start)))
    return out


class _Ahead:
    """Keeps POSIX_FADV_WILLNEED ``window`` bytes ahead of the read position: a readahead window of our choosing,
    per file, without changing the device's read_ahead_kb."""

    def __init__(self, fd: int, end: int, window: int, step: int) -> None:
        self.fd, self.end, self.window, self.step = fd, end, window, max(step, 1 << 20)
        self.issued = 0

    def advance(self, off: int) -> None:
        if self.window <= 0:
            return
        self.issued = max(self.issued, off)
        target = min(off + self.window, self.end)
        while self.issued < target:
            n = min(self.step, target - self.issued)
            os.posix_fadvise(self.fd, self.issued, n, os.POSIX_FADV_WILLNEED)
            self.issued += n


def _read_pread(fd: int, seg: _Segment, buf: memoryview, prog: _Progress, ahead_bytes: int = 0) -> int:
    off, end = seg.start, seg.start + seg.length
    size = len(buf)
    ahead = _Ahead(fd, end, ahead_bytes, size)
    while off < end:
        ahead.advance(off)
        want = min(size, end - off)
        n = os.preadv(fd, [buf[:want]] if want < size else [buf], off)
        if n <= 0:
            break
        off += n
        prog.add(n)
    return off - seg.start


def _read_sendfile(fd: int, seg: _Segment, sink: int, chunk: int, prog: _Progress, ahead_bytes: int = 0) -> int:
    """sendfile(2) into /dev/null: the pages go through the page cache, none is copied to user space."""
    off, end = seg.start, seg.start + seg.length
    ahead = _Ahead(fd, end, ahead_bytes, chunk)
    while off < end:
        ahead.advance(off)
        n = os.sendfile(sink, fd, off, min(chunk, end - off))
        if n <= 0:
            break
        off += n
        prog.add(n)
    return off - seg.start


def _read_populate(fd: int, seg: _Segment, prog: _Progress) -> int:
    if seg.length <= 0:
        return 0
    with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mm:  # maps the whole file; cheap
        end = min(seg.start + seg.length, len(mm))
        step = 64 << 20
        off = seg.start
        while off < end:
            n = min(step, end - off)
            mm.madvise(_MADV_POPULATE_READ, off, n)  # EFAULT (not SIGBUS) when the file shrank under us
            off += n
            prog.add(n)
        return off - seg.start


def read_files(
    files: Sequence[WarmFile],
    opts: ReaderOptions,
    prog: _Progress,
    errors: dict[str, str],
    hook: Optional[FileHook] = None,
) -> int:
    """Read every file once, in parallel; record one message per failed file. Returns bytes read."""
    segs = _segments(files, opts.segment_bytes)
    nthreads = max(1, min(default_threads(opts.threads), len(segs)))
    next_idx = [0]
    idx_lock = threading.Lock()
    total = [0]
    started: set[str] = set()

    def fail(f: WarmFile, msg: str) -> None:
        with idx_lock:
            errors.setdefault(f.path, f"{f.path}: {msg}")

    def worker() -> None:
        sink = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC) if opts.method == "sendfile" else -1
        try:
            _work(sink)
        finally:
            if sink >= 0:
                os.close(sink)

    def _work(sink: int) -> None:
        buf = memoryview(b"")

        def buffer() -> memoryview:  # allocated once per thread, only when pread runs
            nonlocal buf
            if not buf:
                buf = memoryview(bytearray(min(opts.buffer_bytes, _PREAD_BUFFER_MAX)))
            return buf

        while True:
            with idx_lock:
                if next_idx[0] >= len(segs):
                    return
                seg = segs[next_idx[0]]
                next_idx[0] += 1
                first = seg.file.path not in started
                started.add(seg.file.path)
                failed = seg.file.path in errors
            if failed:
                continue
            if first and hook is not None:
                hook(seg.file.path)
            try:
                fd = os.open(seg.file.real, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                fail(seg.file, "vanished before it was read" if exc.errno == errno.ENOENT else
                     f"cannot open: {exc.strerror or exc}")
                continue
            try:
                if opts.fadvise != "none" and seg.length > 0:
                    os.posix_fadvise(fd, seg.start, seg.length, os.POSIX_FADV_SEQUENTIAL)
                    if opts.fadvise == "seq+willneed":
                        os.posix_fadvise(fd, seg.start, seg.length, os.POSIX_FADV_WILLNEED)
                got = -1
                if opts.method == "sendfile":
                    try:
                        got = _read_sendfile(fd, seg, sink, opts.buffer_bytes, prog, opts.ahead_bytes)
                    except OSError as exc:  # a filesystem without splice support: read it instead
                        if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                            raise
                elif opts.method == "populate":
                    got = _read_populate(fd, seg, prog)
                if got < 0:
                    got = _read_pread(fd, seg, buffer(), prog, opts.ahead_bytes)
                if got < seg.length:
                    fail(seg.file, f"file shrank during read (ends before byte {seg.start + got} "
                                   f"of {seg.file.size})")
                with idx_lock:
                    total[0] += got
            except (OSError, ValueError) as exc:
                fail(seg.file, f"read failed: {getattr(exc, 'strerror', None) or exc}")
            finally:
                os.close(fd)

    threads = [threading.Thread(target=worker, name=f"prewarm-{i}", daemon=True) for i in range(nthreads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return total[0]


# -- the whole step -------------------------------------------------------------------------------------
HIDDEN = -1  # resident_bytes: the kernel hides this file's page-cache residency from this process


def residency_hidden(st: os.stat_result, path: str) -> bool:
    """mincore(2) and cachestat(2) report every page as resident to a caller that neither owns the file nor may
    write it (the kernel's page-cache side-channel guard). Seen on the lent H100 (issue 17): ``serve`` as the vLLM
    user over root-owned model files took a cold 16 GB checkpoint for "already resident" and read nothing."""
    return os.geteuid() != 0 and st.st_uid != os.geteuid() and not os.access(path, os.W_OK)


def resident_bytes(res: Residency, f: WarmFile) -> Optional[int]:
    """Resident bytes of the file we resolved; None when it is gone or was replaced; HIDDEN when the kernel will
    not say. Raises OSError."""
    try:
        fd = os.open(f.real, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (f.dev, f.ino):
            return None
        if residency_hidden(st, f.real):
            return HIDDEN
        return min(res.bytes_fd(fd, st.st_size), f.size)
    finally:
        os.close(fd)


def _oserr(exc: OSError) -> str:
    return str(exc.strerror or exc)


def main_storage(host: Host, files: Sequence[WarmFile]) -> Storage:
    """The storage holding most of the bytes to read: its reader is used for all (a model on two devices is rare)."""
    by_dev: dict[int, int] = {}
    for f in files:
        by_dev[f.dev] = by_dev.get(f.dev, 0) + f.size
    if not by_dev:
        return Storage("unknown", "-")
    return storage_of(host, max(by_dev, key=lambda d: by_dev[d]))


def describe_reader(opts: ReaderOptions) -> str:
    layout = f"{opts.segment_bytes >> 20} MiB segments" if opts.segment_bytes else "whole files"
    ahead = f", WILLNEED {opts.ahead_bytes >> 20} MiB ahead" if opts.ahead_bytes else ""
    return (f"{opts.method}, {default_threads(opts.threads)} thread(s), {layout}, "
            f"{opts.buffer_bytes >> 20} MiB calls, fadvise {opts.fadvise}{ahead}")


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
    _file_hook: Optional[FileHook] = None,
) -> PrewarmResult:
    """Warm ``targets`` into the page cache, largest file first, within ``budget_bytes`` (None = no limit).

    ``host`` is the seam through which the storage under the files is read (sysfs, mountinfo) to pick the reader
    (``reader_for``) unless ``reader`` is given; targets are data paths, not re-rooted. ``residency``: "auto"
    (cachestat, else mincore), "cachestat" or "mincore"; None reads ``$VLLM_NODEAGENT_RESIDENCY``.
    ``_file_hook(path)`` runs before each file is first read (tests only).
    Never raises for bad targets or files: each problem is one line in ``errors`` and the rest is warmed.
    """
    logger = log.get()
    res = Residency(residency)
    result = PrewarmResult(budget_bytes=budget_bytes)
    files, errs = resolve_targets(targets, hf_cache)
    result.errors.extend(errs)
    taken, skipped = apply_budget(files, budget_bytes)
    result.skipped = [(f.path, f.size) for f in skipped]
    if skipped:
        logger.warning("prewarm.budget", budget_bytes=budget_bytes, skipped_files=len(skipped),
                       skipped_bytes=result.skipped_bytes, warmed_bytes=sum(f.size for f in taken))
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
        logger.warning("prewarm.residency_hidden", files=len(hidden), uid=os.geteuid(),
                       detail="the kernel reports files this user neither owns nor may write as fully cached: "
                              "read in full, residency not measured")
    to_read = [f for f in taken if f.path in before and before[f.path] < f.size]
    storage = main_storage(host, [f for f in taken if f.path in before])
    opts = reader or reader_for(storage)
    if threads:
        opts = dataclasses.replace(opts, threads=threads)
    result.threads = default_threads(opts.threads)
    result.reader = f"{describe_reader(opts)} on {storage.describe()}"
    prog = _Progress(sum(f.size for f in to_read), progress)
    t0 = time.monotonic()
    result.read_bytes = read_files(to_read, opts, prog, file_errors, _file_hook)
    result.seconds = time.monotonic() - t0
    prog.finish()
    result.gbps = result.read_bytes / result.seconds / 1e9 if result.seconds > 0 else 0.0
    for f in taken:
        if f.path not in before:
            continue
        try:
            after = resident_bytes(res, f)
        except OSError as exc:
            file_errors.setdefault(f.path, f"{f.path}: residency after the read: {_oserr(exc)}")
            continue
        if after is None:
            file_errors.setdefault(f.path, f"{f.path}: vanished during prewarm")
            continue
        if after == HIDDEN:
            after = 0 if f.path in file_errors else f.size  # read in full without error; not measured
        try:
            now_size = os.stat(f.real).st_size
        except OSError:
            now_size = f.size
        if now_size < f.size:
            file_errors.setdefault(f.path, f"{f.path}: file shrank during prewarm ({f.size} -> {now_size} bytes)")
        if f.path in file_errors:
            continue
        result.files += 1
        result.total_bytes += f.size
        result.resident_before_bytes += before[f.path]
        result.resident_after_bytes += after
        result.paths.append(f.path)
    result.errors.extend(file_errors[f.path] for f in taken if f.path in file_errors)
    result.residency_method = res.method + (f" (hidden for {len(hidden)} file(s): counted as read)" if hidden else "")
    if lock:
        locked = LockedPages()
        for f in taken:
            if f.path in file_errors:
                continue
            try:
                locked.lock_file(f.real)
            except OSError as exc:
                locked.release()
                result.errors.append(lock_failure_message(f.path, exc))
                break
        else:
            result.locked = locked
    logger.info("prewarm.done", files=result.files, total_bytes=result.total_bytes,
                resident_before_bytes=result.resident_before_bytes,
                resident_after_bytes=result.resident_after_bytes, seconds=round(result.seconds, 3),
                gbps=round(result.gbps, 3), errors=len(result.errors), method=result.residency_method,
                reader=result.reader)
    return result


def lock_failure_message(path: str, exc: OSError) -> str:
    import resource

    soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    limit = "unlimited" if soft == resource.RLIM_INFINITY else f"{soft} bytes"
    return (f"{path}: mlock failed: {os.strerror(exc.errno or 0)}; RLIMIT_MEMLOCK is {limit} — raise it "
            "(LimitMEMLOCK=infinity in the unit, ulimit -l) or grant CAP_IPC_LOCK")


# -- CLI ------------------------------------------------------------------------------------------------
def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


class ProgressReporter:
    """A one-line bar on a terminal (bytes, GB/s, ETA); structured log lines every few seconds otherwise."""

    def __init__(self, stream: Any = None, log_interval: float = 5.0) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0 = time.monotonic()
        self.log_interval = log_interval
        self._last_log = self.t0
        self._drawn = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        elapsed = max(now - self.t0, 1e-9)
        rate = done / elapsed
        eta = (total - done) / rate if rate > 0 else 0.0
        if self.tty:
            width = 30
            filled = int(width * done / total) if total else width
            self.stream.write(f"\rprewarm [{'#' * filled}{'.' * (width - filled)}] {_human(done)}/{_human(total)}"
                              f"  {rate / 1e9:.2f} GB/s  ETA {eta:.0f}s ")
            self.stream.flush()
            self._drawn = True
        elif now - self._last_log >= self.log_interval or done >= total:
            self._last_log = now
            log.get().info("prewarm.progress", done_bytes=done, total_bytes=total, gbps=round(rate / 1e9, 3),
                           eta_s=round(eta, 1))

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()


def hold_until_signal(ready: Optional[Callable[[], None]] = None) -> int:
    """Block until SIGINT or SIGTERM; ``ready`` runs once the handlers are in place. Returns the signal."""
    got: list[int] = []
    done = threading.Event()

    def handler(signum: int, _frame: Any) -> None:
        got.append(signum)
        done.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if ready is not None:
            ready()
        while not done.wait(0.5):
            pass
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return got[0]


def cmd_prewarm(ctx: Context, args: argparse.Namespace) -> int:
    from vllm_nodeagent.config import PrewarmConfig
    from vllm_nodeagent.context import EXIT_FAILED, EXIT_OK, EXIT_USAGE, print_json

    cfg = ctx.config.prewarm or PrewarmConfig()
    targets: list[str] = list(args.targets)
    env: Mapping[str, str] = os.environ
    if not targets:
        targets, env = config_targets(ctx.config)
        if not targets:
            print("vllm-nodeagent: prewarm: no TARGET given and none configured ([prewarm] paths, [vllm] model)",
                  file=sys.stderr)
            return EXIT_USAGE
    threads = args.threads if args.threads is not None else cfg.threads
    if threads < 0:
        print(f"vllm-nodeagent: prewarm: --threads {threads}: must be >= 0", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.budget is not None:
            budget = parse_budget(args.budget, ctx.host)
        else:
            budget = budget_from_config(ctx.host, cfg.memory_budget_fraction)
    except BudgetError as exc:
        print(f"vllm-nodeagent: prewarm: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (HostError, ParseError, KeyError) as exc:
        print(f"vllm-nodeagent: prewarm: cannot read MemAvailable for the budget: {exc}", file=sys.stderr)
        return EXIT_FAILED
    bar = ProgressReporter()
    try:
        result = prewarm(targets, host=ctx.host, budget_bytes=budget, threads=threads, lock=args.lock,
                         progress=bar, hf_cache=hf_cache_dir(env))
    finally:
        bar.close()
    for err in result.errors:
        print(f"vllm-nodeagent: prewarm: {err}", file=sys.stderr)
    if result.skipped:
        print(f"vllm-nodeagent: prewarm: budget {_human(budget)}: {len(result.skipped)} file(s), "
              f"{_human(result.skipped_bytes)} not warmed (largest first, what fits)", file=sys.stderr)
    if args.json:
        print_json(result.to_json())
    else:
        print(f"files {result.files}  total {_human(result.total_bytes)}  "
              f"resident before {_human(result.resident_before_bytes)}  "
              f"after {_human(result.resident_after_bytes)} ({100 * result.resident_fraction:.1f}%)  "
              f"read {_human(result.read_bytes)} in {result.seconds:.2f}s ({result.gbps:.2f} GB/s)")
    sys.stdout.flush()
    code = EXIT_OK if result.ok else EXIT_FAILED
    if args.lock and result.locked is not None:
        locked = result.locked

        def announce() -> None:
            print(f"vllm-nodeagent: prewarm: locked {_human(locked.bytes)} in {locked.files} file(s); "
                  "holding until SIGINT/SIGTERM", file=sys.stderr, flush=True)

        try:
            hold_until_signal(announce)
        finally:
            locked.release()
    return code
