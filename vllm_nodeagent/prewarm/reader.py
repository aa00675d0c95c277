"""The parallel page-cache reader: files cut into segments that a few threads read once each, by sendfile(2),
preadv(2) or MADV_POPULATE_READ, with the design picked from the storage under the files (storage.py).

Measured designs and why each storage kind gets its reader: docs/prewarm.md, bench/prewarm.py --designs.
One failed file is one message; the others are still read.
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable, Optional

from vllm_nodeagent import log
from vllm_nodeagent.host import Host, paths
from vllm_nodeagent.prewarm.ioprio import set_thread_io_priority
from vllm_nodeagent.prewarm.targets import WarmFile
from vllm_nodeagent.storage import Storage, storage_of

ProgressFn = Callable[[int, int], None]
FileHook = Callable[[str], None]

_MADV_POPULATE_READ = 22  # Linux >= 5.14; Python 3.9's mmap module does not name it


# -- reader design -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReaderOptions:
    """How files are read. ``reader_for`` picks one per storage kind from bench/prewarm.py (docs/prewarm.md).

    method: "pread" (preadv into one reused buffer per thread), "sendfile" (sendfile(2) to /dev/null, no copy to
    user space; buffer_bytes is the chunk per call) or "populate" (mmap + MADV_POPULATE_READ).
    segment_bytes: files are cut into segments of this size that threads take in order (0 = whole files).
    fadvise: "none", "seq" (POSIX_FADV_SEQUENTIAL), "seq+willneed" (also WILLNEED on the segment) or "random"
    (POSIX_FADV_RANDOM: no readahead, exactly the segment: learned ranges, prewarm/learned.py).
    ahead_bytes: keep POSIX_FADV_WILLNEED this far ahead of the read position (0 = the kernel's readahead only).
    io_priority: "" (the daemon's own), "low" or "idle" for every reader thread (prewarm/ioprio.py): the reads
    beside vLLM's start.
    """

    threads: int = 0
    buffer_bytes: int = 64 << 20
    segment_bytes: int = 256 << 20
    fadvise: str = "seq"
    method: str = "sendfile"
    ahead_bytes: int = 0
    io_priority: str = ""


# Parallel streams over segments: NVMe, virtio, SSDs, network filesystems, unknown (storage.Storage.parallel).
PARALLEL_READER = ReaderOptions(threads=4, buffer_bytes=64 << 20, segment_bytes=256 << 20)
# The stack's learned pages: thousands of small ranges, many in flight, each read as it is and no further (a
# virtio disk's read_ahead_kb of 8 MiB, seen on the H200, would read most of every library again).
LEARNED_READER = ReaderOptions(threads=32, buffer_bytes=64 << 20, segment_bytes=256 << 20, fadvise="random")
# One sequential stream, files in turn: spinning disks (a switch between streams is a seek) and memory.
SEQUENTIAL_READER = ReaderOptions(threads=1, buffer_bytes=64 << 20, segment_bytes=0)


def reader_for(storage: Storage) -> ReaderOptions:
    return PARALLEL_READER if storage.parallel else SEQUENTIAL_READER


DEFAULT_THREADS = 4
_PREAD_BUFFER_MAX = 8 << 20


def default_threads(requested: int = 0) -> int:
    """Reads are I/O-bound (the syscalls drop the GIL): queue depth matters more than cores."""
    return requested if requested > 0 else DEFAULT_THREADS


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
    prio = f", I/O priority {opts.io_priority}" if opts.io_priority else ""
    return (
        f"{opts.method}, {default_threads(opts.threads)} thread(s), {layout}, "
        f"{opts.buffer_bytes >> 20} MiB calls, fadvise {opts.fadvise}{ahead}{prio}"
    )


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
        for first, length in f.ranges or ((0, f.size),):
            length = max(0, min(length, f.size - first))  # a learned range past a file that shrank: cut
            step = segment_bytes if segment_bytes > 0 else max(length, 1)
            for start in range(first, first + max(length, 1), step):
                out.append(_Segment(f, start, min(step, first + length - start)))
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
    refused: Optional[list[str]] = None,
) -> int:
    """Read every file once, in parallel; record one message per failed file. Returns bytes read. ``refused``
    collects why a thread could not take ``opts.io_priority`` (one warning while it is empty)."""
    segs = _segments(files, opts.segment_bytes)
    nthreads = max(1, min(default_threads(opts.threads), len(segs)))
    next_idx = [0]
    idx_lock = threading.Lock()
    total = [0]
    started: set[str] = set()
    said_why = refused if refused is not None else []

    def fail(f: WarmFile, msg: str) -> None:
        with idx_lock:
            errors.setdefault(f.path, f"{f.path}: {msg}")

    def worker() -> None:
        if opts.io_priority:
            try:
                set_thread_io_priority(opts.io_priority)
            except (OSError, ValueError) as exc:  # the read goes on at the daemon's own priority; said once
                with idx_lock:
                    said = bool(said_why)
                    said_why.append(str(exc))
                if not said:
                    log.get().warning("prewarm.io_priority_refused", io_priority=opts.io_priority, error=str(exc))
        sink = paths.devnull_writer() if opts.method == "sendfile" else -1
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
                fd = paths.open_regular(seg.file.real, (seg.file.dev, seg.file.ino))
            except OSError as exc:
                fail(
                    seg.file,
                    "vanished before it was read"
                    if exc.errno == errno.ENOENT
                    else f"cannot open: {exc.strerror or exc}",
                )
                continue
            try:
                if opts.fadvise == "random":
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # this fd only: vLLM's own reads keep theirs
                elif opts.fadvise != "none" and seg.length > 0:
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
                    fail(seg.file, f"file shrank during read (ends before byte {seg.start + got} of {seg.file.size})")
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
