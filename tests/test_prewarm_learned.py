"""The stack's learned pages (issue 23, prewarm/learned.py): once vLLM serves, the pages of its interpreter and
libraries that are in the page cache are kept; the next start reads those, and only those, before vLLM starts.
Real page cache, checked by util-linux ``fincore`` (mincore(2)), not by the agent's own word; files of the test's
own, their cache dropped with posix_fadvise DONTNEED."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fakehost import real_accounts
from test_prewarm_stack import SYSTEM_PY, _Log, drop, fincore, make_stack

from vllm_nodeagent.host import Host
from vllm_nodeagent.prewarm.learned import PAGES_FILE, learn_pages, learned_pages
from vllm_nodeagent.prewarm.reader import LEARNED_READER
from vllm_nodeagent.prewarm.residency import resident_ranges
from vllm_nodeagent.prewarm.targets import WarmFile
from vllm_nodeagent.prewarm.warm import prewarm

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists(SYSTEM_PY) or not shutil.which("fincore"),
    reason="needs root (page cache of files it does not own, the path asked as nobody) and fincore",
)
KIB = 1024


@pytest.fixture
def base() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="vna-learned-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d)


def touch_pages(path: Path, ranges: list[tuple[int, int]]) -> None:
    """Read exactly these byte ranges into the page cache (no readahead: POSIX_FADV_RANDOM on this fd)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        for off, n in ranges:
            os.pread(fd, n, off)
    finally:
        os.close(fd)


def warm_file(path: Path) -> WarmFile:
    st = os.stat(path)
    return WarmFile(str(path), str(path), st.st_size, st.st_dev, st.st_ino)


def cache_drops(path: Path) -> bool:
    drop(path)
    return fincore([path])[str(path)] == 0


def test_the_learned_ranges_are_the_resident_pages_and_a_warm_up_reads_those_and_nothing_more(base: Path) -> None:
    lib = base / "libbig.so"
    lib.write_bytes(os.urandom(2048 * KIB))
    if not cache_drops(lib):
        pytest.skip("this filesystem keeps pages DONTNEED asks to drop (tmpfs?)")
    pages = [(0, 16 * KIB), (1024 * KIB, 8 * KIB), (1040 * KIB, 4 * KIB)]  # the last two 8 KiB apart
    touch_pages(lib, pages)
    fd = os.open(lib, os.O_RDONLY)
    try:
        exact = resident_ranges(fd, lib.stat().st_size, join_pages=0)
        joined = resident_ranges(fd, lib.stat().st_size)  # gaps under 16 pages are read rather than skipped
    finally:
        os.close(fd)
    assert exact == pages
    assert joined == [(0, 16 * KIB), (1024 * KIB, 20 * KIB)]
    drop(lib)
    f = warm_file(lib)
    f.ranges = tuple(joined)
    result = prewarm([], host=Host("/"), budget_bytes=None, stack=[f], reader=LEARNED_READER)
    assert result.errors == [] and result.stack_files == 1
    assert result.stack_bytes == f.want == 36 * KIB
    assert result.stack_resident_after_bytes == 36 * KIB
    assert fincore([lib])[str(lib)] == 36 * KIB  # read: the ranges, and not a page of readahead past them


def test_learned_pages_round_trip_and_what_changed_since_is_left_out(base: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    files = []
    for name in ("a.pyc", "b.pyc", "c.so", "cold.pyc"):
        p = base / name
        p.write_bytes(os.urandom(64 * KIB))
        if not cache_drops(p):
            pytest.skip("this filesystem keeps pages DONTNEED asks to drop (tmpfs?)")
        files.append(p)
    for p in files[:3]:
        touch_pages(p, [(0, 64 * KIB)])
    host = Host("/")
    kept, nbytes = learn_pages(host, str(state), [warm_file(p) for p in files])
    assert (kept, nbytes) == (3, 3 * 64 * KIB)  # the cold file had no page resident: not learned
    doc = json.loads((state / PAGES_FILE).read_text())
    assert [Path(e[0]).name for e in doc["files"]] == ["a.pyc", "b.pyc", "c.so"]
    assert oct((state / PAGES_FILE).stat().st_mode & 0o777) == "0o600"  # root's view of residency: root's only

    # a later start that left nothing of these resident keeps the list it had
    for p in files:
        drop(p)
    assert learn_pages(host, str(state), [warm_file(p) for p in files]) == (0, 0)
    assert json.loads((state / PAGES_FILE).read_text()) == doc

    back, stale = learned_pages(host, str(state))
    assert [Path(f.path).name for f in back] == ["a.pyc", "b.pyc", "c.so"] and stale == 0
    assert all(f.ranges == ((0, 64 * KIB),) for f in back)

    # rewritten in place (an upgrade): another mtime; replaced by a link to a decoy of the test's: never read
    time.sleep(0.01)
    files[0].write_bytes(os.urandom(64 * KIB))
    decoy = base / "decoy.bin"
    decoy.write_bytes(os.urandom(64 * KIB))
    files[1].unlink()
    files[1].symlink_to(decoy)
    back, stale = learned_pages(host, str(state))
    assert [Path(f.path).name for f in back] == ["c.so"] and stale == 2
    drop(decoy)
    prewarm([], host=host, budget_bytes=None, stack=back, reader=LEARNED_READER)
    assert fincore([decoy])[str(decoy)] == 0


@pytest.mark.parametrize(
    "damage",
    [
        "{not json",
        '{"version": 2, "files": []}',
        '{"version": 1, "files": [["/etc/passwd", 1, 2, 3]]}',
        '{"version": 1, "files": [["/x", 1, 2, 3, 4, [[0, -1]]]]}',
        '{"version": 1, "files": [["/x", 1, 2, 3, 4, [[0, 4096.5]]]]}',
        '{"version": 1, "files": "all"}',
        '{"version": 1, "files": [["/x", 1, 2, 8192, 4, [[4096, 8192]]]]}',  # past the file's end
        '{"version": 1, "files": [["/x", 1, 2, 8192, 4, [[4096, 10], [0, 10]]]]}',  # out of order
        '{"version": 1, "files": [["/x", 1, 2, 8192, 4, []]]}',
        '{"version": 1, "files": [["/x", 1, 2, 8192, 4, [[0, 1]], "more"]]}',
        "[]",
    ],
)
def test_a_damaged_learned_file_is_not_trusted_at_all(tmp_path: Path, damage: str) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / PAGES_FILE).write_text(damage)
    assert learned_pages(Host("/"), str(state)) == ([], 0)


def agent_root(tmp_path: Path) -> tuple[Path, Path]:
    """A --root tree with the machine's real nobody and a meminfo, and a state dir (its path as the agent sees
    it; the directory itself inside the tree)."""
    root = tmp_path / "root"
    real_accounts(root, "nobody")
    (root / "proc").mkdir(parents=True)
    (root / "proc" / "meminfo").write_text("MemTotal: 16777216 kB\nMemAvailable: 8388608 kB\n")
    state = tmp_path / "state"
    (root / str(state).lstrip("/")).mkdir(parents=True)
    return root, state


def loop_for(root: Path, cfg: Any, log: _Log, status: list[str]) -> Any:
    return SimpleNamespace(
        ctx=SimpleNamespace(config=cfg, host=Host(root)),
        log=log,
        notify=SimpleNamespace(status=status.append),
        metrics=SimpleNamespace(set_prewarm=lambda *a: None),
        watchdog=lambda now: None,
        clock=time.monotonic,
    )


def test_the_daemon_learns_what_vllm_had_resident_and_reads_it_first_at_the_next_start(
    tmp_path: Path, base: Path
) -> None:
    """learn_after_ready keeps the resident pages of the stack (as the vLLM user sees its path); at the next
    start prewarm_before_start (overlap, stack_learned) reads those before it returns, i.e. before vLLM starts,
    and the weights wait beside the start as before."""
    from vllm_nodeagent.config import parse_config
    from vllm_nodeagent.daemon.prewarm_step import learn_after_ready, prewarm_before_start

    _, files = make_stack(base)
    pycs = sorted(p for p in files if p.suffix == ".pyc")
    weights = base / "model" / "model.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(os.urandom(256 * KIB))
    for p in [*files, weights]:
        drop(p)
    if fincore([pycs[0]])[str(pycs[0])]:
        pytest.skip("this filesystem keeps pages DONTNEED asks to drop (tmpfs?)")
    used = pycs[:2]  # what "vLLM" read: two modules' bytecode
    for p in used:
        p.read_bytes()
    root, state = agent_root(tmp_path)
    cfg = parse_config(
        f'[agent]\nstate_dir = "{state}"\n[prewarm]\nstack_learned = true\n'
        f'[vllm]\ncommand = ["{base}/venv/bin/python", "-m", "vllm"]\nmodel = "{weights.parent}"\nuser = "nobody"\n',
        "c",
    )
    log = _Log()
    thread = learn_after_ready(loop_for(root, cfg, log, []), os.getpid())
    assert thread is not None
    thread.join(120)
    learned = {kw["files"] for ev, kw in log.events if ev == "prewarm_learned_pages"}
    doc = json.loads((root / str(state).lstrip("/") / PAGES_FILE).read_text())  # through the --root seam
    names = {Path(e[0]).name for e in doc["files"]}
    assert {p.name for p in used} <= names, (names, log.events)
    assert not {p.name for p in pycs[2:]} & names  # never read: not learned
    assert learned and min(learned) >= 2

    for p in [*files, weights]:
        drop(p)
    log2, status = _Log(), []
    imported = threading.Event()  # "vLLM" still imports until the test says otherwise
    assert prewarm_before_start(
        loop_for(root, cfg, log2, status), lambda: "imports done" if imported.is_set() else None
    ) is None  # fmt: skip
    # before it returned (vLLM not started yet): the learned bytecode is resident, the rest of the stack is not
    res = fincore([*used, *pycs[2:], weights])
    assert all(res[str(p)] >= p.stat().st_size for p in used), res  # whole pages
    assert all(res[str(p)] == 0 for p in pycs[2:]), res
    assert res[str(weights)] == 0  # the weights wait for vLLM's imports (may_read says None: still importing)
    stack_done = [kw for ev, kw in log2.events if ev == "prewarm_done" and kw.get("part") == "stack"]
    assert stack_done and stack_done[0]["files"] >= len(used)  # and what else was resident on the path
    assert status and status[0] == "prewarming"
    imported.set()
    for t in threading.enumerate():
        if t.name == "prewarm-beside-start":
            t.join(60)
    assert fincore([weights])[str(weights)] >= weights.stat().st_size  # then the weights


def test_without_stack_learned_nothing_is_learned_nor_read_before_the_start(tmp_path: Path) -> None:
    """The default (stack_learned = false, measured no gain on the H200): READY keeps only the mapped-library
    list, and a pages file left from before is not read."""
    from vllm_nodeagent.config import parse_config
    from vllm_nodeagent.daemon.prewarm_step import learn_after_ready, prewarm_before_start

    root, state = agent_root(tmp_path)
    lib = tmp_path / "lib.so"
    lib.write_bytes(os.urandom(64 * KIB))
    st = lib.stat()
    doc = {"version": 1, "files": [[str(lib), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, [[0, 64 * KIB]]]]}
    (root / str(state).lstrip("/") / PAGES_FILE).write_text(json.dumps(doc))
    cfg = parse_config(f'[agent]\nstate_dir = "{state}"\n[prewarm]\ninclude_model = false\n', "c")
    log = _Log()
    assert learn_after_ready(loop_for(root, cfg, log, []), os.getpid()) is None
    assert [ev for ev, _ in log.events] == ["prewarm_learned"]
    drop(lib)
    prewarm_before_start(loop_for(root, cfg, log, []), lambda: "imports done")
    assert not [kw for ev, kw in log.events if ev == "prewarm_done" and kw.get("part") == "stack"]
    assert fincore([lib])[str(lib)] == 0


def test_the_stack_walk_never_enters_a_directory_swapped_for_a_link_and_stops_at_its_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Root walks a tree the vLLM user may own: a directory listed as one and swapped for a link to a decoy (of
    this test's own) before the walk reaches it is not entered; a path entry holding more than the limit stops
    the walk with a line that says so."""
    import sys

    from vllm_nodeagent.host import paths as hpaths
    from vllm_nodeagent.prewarm import stack as st

    top = tmp_path / "site"
    (top / "pkg").mkdir(parents=True)
    (top / "pkg" / "real.so").write_bytes(b"x")
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    (decoy / "secret.so").write_bytes(b"s")
    listed = hpaths.scan

    def scan_then_swap(d: str | os.PathLike[str]) -> list[os.DirEntry[str]]:
        entries = listed(d)
        if Path(d) == top:  # the listing saw a directory; the owner swaps it now
            (top / "pkg" / "real.so").unlink()
            (top / "pkg").rmdir()
            (top / "pkg").symlink_to(decoy)
        return entries

    monkeypatch.setattr(hpaths, "scan", scan_then_swap)
    files, errors = st.stack_files(sys.executable, [str(top)])
    assert not [f for f in files if "secret" in f.path] and not errors
    monkeypatch.setattr(hpaths, "scan", listed)

    for i in range(5):
        (top / f"m{i}.so").write_bytes(b"y")
    files, errors = st.stack_files(sys.executable, [str(top)], limit=3)
    assert len(files) == 3 and errors == ["serving stack: stopped at 3 files (is a path entry a whole filesystem?)"]


def test_learned_ranges_the_cache_gave_back_are_read_again_within_the_ranges_only(base: Path) -> None:
    """Reclaim between the ranges' read and the residency check (prewarm.reclaimed): what is read again is the
    part of the learned ranges now missing — not the rest of the library, not the whole ranges."""
    from vllm_nodeagent.prewarm.reader import ReaderOptions

    lib, other = base / "libbig.so", base / "libother.so"
    lib.write_bytes(os.urandom(2048 * KIB))
    other.write_bytes(os.urandom(64 * KIB))
    if not (cache_drops(lib) and cache_drops(other)):
        pytest.skip("this filesystem keeps pages DONTNEED asks to drop (tmpfs?)")
    f = warm_file(lib)
    f.ranges = ((0, 16 * KIB), (1024 * KIB, 20 * KIB))

    def hook(path: str) -> None:
        if path == str(other):  # lib's ranges were read: give 8 KiB of the second back
            fd = os.open(lib, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 1028 * KIB, 8 * KIB, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)

    one_by_one = ReaderOptions(threads=1, segment_bytes=0, fadvise="random")
    result = prewarm(
        [], host=Host("/"), budget_bytes=None, stack=[f, warm_file(other)], reader=one_by_one, _file_hook=hook
    )
    assert result.errors == [] and 8 * KIB <= result.reclaimed_bytes < 8 * KIB + 64 * KIB
    assert 8 * KIB <= result.read_bytes - (36 + 64) * KIB <= result.reclaimed_bytes  # the hole, in the ranges
    assert fincore([lib])[str(lib)] == 36 * KIB  # the ranges again, and nothing outside them
