"""The default prewarm warms the serving stack (issue 23): the vLLM interpreter and the .so/.py/.pyc on its path
as the vLLM user sees it, before the weights, within the budget. Residency is checked here independently of the
agent's word: util-linux ``fincore`` (mincore(2)) after the files' cache was dropped (posix_fadvise DONTNEED on
copies made for the test). Real interpreter, real user (nobody)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fakehost import real_accounts

from vllm_nodeagent.cli import main

SYSTEM_PY = "/usr/bin/python3"
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists(SYSTEM_PY) or not shutil.which("fincore"),
    reason="needs root (to ask the path as nobody), /usr/bin/python3 and fincore",
)
MIB = 1 << 20


def drop(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd) if os.access(path, os.W_OK) else None
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def fincore(paths: list[Path]) -> dict[str, int]:
    """Resident bytes per file, as util-linux fincore (mincore) reports them: not the agent's own measurement."""
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES,FILE", *map(str, paths)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return {line.split(" ", 1)[1]: int(line.split(" ", 1)[0]) for line in out.splitlines() if line.strip()}


def make_stack(base: Path) -> tuple[Path, list[Path]]:
    """A venv of the system Python with a package of .py, .pyc and a real extension module (.so) in it."""
    subprocess.run([SYSTEM_PY, "-m", "venv", "--without-pip", str(base / "venv")], check=True)
    site = next((base / "venv" / "lib").glob("python3*/site-packages"))
    pkg = site / "stackpkg"
    (pkg / "lib").mkdir(parents=True)
    for i in range(8):
        (pkg / f"mod{i}.py").write_text(f"X = {i}\n" + "# padding\n" * 2000)
    lib_dynload = Path(subprocess.run([SYSTEM_PY, "-c", "import _json; print(_json.__file__)"],
                                      capture_output=True, text=True, check=True).stdout.strip())  # fmt: skip
    shutil.copy(lib_dynload, pkg / "_json.cpython-311-x86_64-linux-gnu.so")
    shutil.copy(lib_dynload, pkg / "lib" / "libfake.so.12")
    subprocess.run([str(base / "venv/bin/python"), "-I", "-S", "-m", "compileall", "-q", str(pkg)], check=True)
    (pkg / "tests").mkdir()
    (pkg / "tests" / "test_x.py").write_text("pass\n")  # a start never reads tests: left out
    # what an import reads: the .pyc and .so (a .py with valid bytecode is only stat'ed)
    files = sorted(p for p in pkg.rglob("*") if p.is_file() and "tests" not in p.parts and p.suffix != ".py")
    assert any(p.suffix == ".pyc" for p in files) and any(p.name.endswith(".so") for p in files)
    return pkg, files


@pytest.fixture
def base() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="vna-stack-", dir="/tmp"))
    d.chmod(0o755)  # nobody must reach the interpreter
    yield d
    shutil.rmtree(d)


def run(tmp_path: Path, base: Path, *args: str, stack: bool = True, mem_kb: int = 8 << 20) -> int:
    root = tmp_path / "root"
    real_accounts(root, "nobody")  # under --root the accounts are the tree's: the machine's real nobody
    (root / "proc").mkdir(parents=True, exist_ok=True)
    (root / "proc" / "meminfo").write_text(f"MemTotal: {2 * mem_kb} kB\nMemAvailable: {mem_kb} kB\n")
    cfg = tmp_path / "config.toml"
    model = base / "model"
    cfg.write_text(
        f"[prewarm]\nmemory_budget_fraction = 0.9\nstack = {str(stack).lower()}\n"
        f'[vllm]\ncommand = ["{base}/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server"]\n'
        f'model = "{model}"\nuser = "nobody"\n'
    )
    cfg.chmod(0o600)
    return main(["--root", str(root), "--config", str(cfg), "prewarm", "--json", *args])


def test_default_prewarm_warms_the_stack_first_then_the_weights(
    tmp_path: Path, base: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _pkg, stack = make_stack(base)
    weights = base / "model" / "model.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(os.urandom(4 * MIB))
    for p in [*stack, weights]:
        drop(p)
    assert sum(fincore([*stack, weights]).values()) == 0, "the cache drop did not take"
    assert run(tmp_path, base) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["stack_files"] > len(stack)  # the interpreter and the stdlib come too
    paths = out["paths"]
    assert paths.index(str(weights)) > max(paths.index(str(p)) for p in stack)  # the stack before the weights
    res = fincore([*stack, weights])
    assert all(res[str(p)] >= min(p.stat().st_size, 4096) for p in [*stack, weights]), res  # by mincore


def test_weights_only_switch_and_the_budget_says_what_was_left_out(
    tmp_path: Path, base: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _pkg, _stack = make_stack(base)
    weights = base / "model" / "model.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(os.urandom(64 * MIB))
    assert run(tmp_path, base, stack=False) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["stack_files"] == 0 and out["paths"] == [str(weights)]
    # a budget the stack fits in but the weights do not: the weights are left out, and the message says so
    assert run(tmp_path, base, "--budget", "48M") == 0
    cap = capsys.readouterr()
    out = json.loads(cap.out)
    assert out["stack_files"] > 0 and str(weights) not in out["paths"]
    assert [s["path"] for s in out["skipped"]] == [str(weights)]
    assert f"first left out: {weights}" in cap.err and "the serving stack first" in cap.err


def test_learned_libraries_are_what_a_running_process_mapped(tmp_path: Path, base: Path) -> None:
    from vllm_nodeagent.host import Host
    from vllm_nodeagent.prewarm import stack as st

    pkg, _ = make_stack(base)
    native = pkg / "_json.cpython-311-x86_64-linux-gnu.so"
    # a parent whose child imports the package's extension module: the tree's maps name it, not the other .so
    child = "import stackpkg._json, time; time.sleep(30)"
    code = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}])"
    proc = subprocess.Popen([str(base / "venv/bin/python"), "-c", code])
    try:
        host = Host("/")
        for _ in range(100):
            libs = st.mapped_libraries(host, proc.pid)
            if str(native) in libs:
                break
            __import__("time").sleep(0.1)
        assert str(native) in libs and str(pkg / "lib" / "libfake.so.12") not in libs
        state = tmp_path / "state"
        state.mkdir()
        assert st.learn(host, str(state), proc.pid) >= 1
        learned = st.learned_libraries(host, str(state))
    finally:
        proc.kill()
        proc.wait()
    site = str(pkg.parent)
    warm, _ = st.stack_files(str(base / "venv/bin/python"), [site], learned)
    names = {os.path.basename(f.path) for f in warm}
    assert native.name in names and "libfake.so.12" not in names  # only what was mapped
    assert "mod1.py" not in names and any(n.startswith("mod1.") and n.endswith(".pyc") for n in names)  # the pyc


class _Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, object]]] = []

    def info(self, event: str, **kw: object) -> None:
        self.events.append((event, kw))

    warning = error = info


@pytest.mark.parametrize("io_priority", ["default", "idle"])
def test_daemon_warm_up_beside_the_start_returns_at_once_and_reads_the_weights_not_the_stack(
    tmp_path: Path, base: Path, io_priority: str
) -> None:
    """[prewarm] overlap (the default): prewarm_before_start waits for nothing; the thread reads the weights and
    not the stack (the H200 runs: a warm-up vLLM waited for cost more than it saved, and the stack read beside
    vLLM's import slowed that import, which reads the stack itself)."""
    import threading
    import time
    from types import SimpleNamespace

    from vllm_nodeagent.config import parse_config
    from vllm_nodeagent.daemon.prewarm_step import prewarm_before_start
    from vllm_nodeagent.host import Host

    make_stack(base)
    weights = base / "model" / "model.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(os.urandom(MIB))
    root = tmp_path / "root"
    real_accounts(root, "nobody")
    (root / "proc").mkdir(parents=True)
    (root / "proc" / "meminfo").write_text("MemTotal: 16777216 kB\nMemAvailable: 8388608 kB\n")
    cfg = parse_config(
        f'[prewarm]\nio_priority = "{io_priority}"\n[vllm]\ncommand = ["{base}/venv/bin/python", "-m", "vllm"]\n'
        f'model = "{weights.parent}"\nuser = "nobody"\n',
        "c",
    )
    log = _Log()
    loop = SimpleNamespace(
        ctx=SimpleNamespace(config=cfg, host=Host(root)),
        log=log,
        notify=SimpleNamespace(status=lambda s: None),
        metrics=SimpleNamespace(set_prewarm=lambda *a: None),
        watchdog=lambda now: None,
        clock=time.monotonic,
    )
    assert prewarm_before_start(loop, lambda: "imports done") is None  # type: ignore[arg-type]  # before any read
    for thread in threading.enumerate():  # the thread may be done already (it waits for nothing here)
        if thread.name == "prewarm-beside-start":
            thread.join(120)
    parts = [kw.get("part") for ev, kw in log.events if ev == "prewarm_done"]
    assert parts == ["weights"], log.events  # no compile cache yet: no second part
    done = {kw["part"]: kw for ev, kw in log.events if ev == "prewarm_done"}
    assert done["weights"]["files"] == 1 and done["weights"]["stack_files"] == 0
    # the reads beside the start at the class asked for (the threads' own class: tests/test_prewarm.py); idle
    # unless told (bench/io_priority.py)
    assert parse_config("[prewarm]\n", "c").prewarm.io_priority == "idle"  # type: ignore[union-attr]
    assert ("I/O priority idle" in str(done["weights"]["reader"])) == (io_priority == "idle"), done


def make_compile_cache(root: Path, base: Path) -> tuple[Path, Path]:
    """A compile cache of user nobody under the tree's default [agent] cache_dir, with one artifact, and two links
    an unprivileged owner of the cache could plant: a directory link and a file link to a decoy of this test."""
    decoy = base / "decoy"
    decoy.mkdir()
    secret = decoy / "secret.bin"
    secret.write_bytes(os.urandom(MIB))
    cache = root / "var/cache/vllm-nodeagent/nobody"
    artifact = cache / "vllm/torch_compile_cache/abc/rank_0_0/backbone/artifact"
    artifact.parent.mkdir(parents=True)
    artifact.write_bytes(os.urandom(MIB))
    (cache / "vllm/evil_dir").symlink_to(decoy)
    (cache / "triton").mkdir()
    (cache / "triton/evil_file").symlink_to(secret)
    for p in (artifact, secret):
        drop(p)
    return artifact, secret


def test_the_weights_wait_for_vllms_imports_and_the_compile_caches_come_last_without_a_link_followed(
    tmp_path: Path, base: Path
) -> None:
    """The default warm-up beside the start reads nothing while vLLM's API server imports (measured on the H200:
    any read beside that import, the stack's or the weights', made the start slower than no warm-up); then the
    weights, then the compile caches. A link in the cache (its owner, the vLLM user, can plant one) is not
    followed: the decoy it points to stays out of the page cache, by mincore."""
    import threading
    from types import SimpleNamespace

    from vllm_nodeagent.config import parse_config
    from vllm_nodeagent.daemon.prewarm_step import prewarm_before_start
    from vllm_nodeagent.host import Host

    _pkg, stack = make_stack(base)
    weights = base / "model" / "model.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(os.urandom(MIB))
    root = tmp_path / "root"
    real_accounts(root, "nobody")
    (root / "proc").mkdir(parents=True)
    (root / "proc" / "meminfo").write_text("MemTotal: 16777216 kB\nMemAvailable: 8388608 kB\n")
    artifact, secret = make_compile_cache(root, base)
    for p in [*stack, weights]:
        drop(p)
    cfg = parse_config(
        f'[prewarm]\n[vllm]\ncommand = ["{base}/venv/bin/python", "-m", "vllm"]\nmodel = "{weights.parent}"\n'
        'user = "nobody"\n',
        "c",
    )
    log = _Log()
    loop = SimpleNamespace(
        ctx=SimpleNamespace(config=cfg, host=Host(root)),
        log=log,
        notify=SimpleNamespace(status=lambda s: None),
        metrics=SimpleNamespace(set_prewarm=lambda *a: None),
        watchdog=lambda now: None,
        clock=time.monotonic,
    )
    imported = threading.Event()
    asked = threading.Event()

    def imports_done() -> str | None:
        asked.set()
        return "imports done" if imported.is_set() else None

    assert prewarm_before_start(loop, imports_done) is None  # type: ignore[arg-type]
    thread = next(t for t in threading.enumerate() if t.name == "prewarm-beside-start")
    assert asked.wait(30)
    time.sleep(1.0)  # vLLM still importing: nothing is read
    assert not [ev for ev, _kw in log.events if ev.startswith("prewarm_")], log.events
    assert sum(fincore([*stack, weights]).values()) == 0
    imported.set()
    thread.join(120)
    events = [(ev, kw.get("part")) for ev, kw in log.events if ev.startswith("prewarm_")]
    assert events == [
        ("prewarm_weights_begin", None),
        ("prewarm_done", "weights"),
        ("prewarm_done", "compile_cache"),
    ], log.events
    begin = next(kw for ev, kw in log.events if ev == "prewarm_weights_begin")
    assert begin["imports_done"] is True and float(str(begin["waited_s"])) >= 0.9
    cache_done = next(kw for ev, kw in log.events if kw.get("part") == "compile_cache")
    assert cache_done["stack_files"] == 1, cache_done  # the artifact; neither link
    res = fincore([artifact, secret, weights, *stack])
    assert res[str(artifact)] == MIB and res[str(weights)] == MIB and res[str(secret)] == 0, res
    assert sum(res[str(p)] for p in stack) == 0, res  # the stack is vLLM's import's to read


def test_prewarm_command_reads_the_compile_caches_with_the_stack_and_follows_no_link_in_them(
    tmp_path: Path, base: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_stack(base)
    weights = base / "model" / "model.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(os.urandom(MIB))
    artifact, secret = make_compile_cache(tmp_path / "root", base)
    assert run(tmp_path, base) == 0
    paths = json.loads(capsys.readouterr().out)["paths"]
    cache_paths = [p for p in paths if "/var/cache/vllm-nodeagent/" in p]
    assert cache_paths == [str(artifact)], cache_paths
    assert fincore([artifact, secret]) == {str(artifact): MIB, str(secret): 0}


def _wait_until(cond: Callable[[], bool], timeout: float = 30.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_vllms_imports_are_done_when_it_starts_a_process_of_its_own_interpreter(method: str, tmp_path: Path) -> None:
    """The sign the weights wait for, on real processes: a helper of another binary (ldconfig, gcc at import
    time; `sleep` here) is not it; the engine core, forked or spawned with the same interpreter, is."""
    from vllm_nodeagent.serving.child import imports_done

    marker = str(tmp_path / "importing")
    code = (
        "import multiprocessing as mp, os, subprocess, time\n"
        f"h = subprocess.Popen(['sleep', '30']); open({marker!r}, 'w').close()\n"
        f"while os.path.exists({marker!r}): time.sleep(0.02)\n"
        f"p = mp.get_context({method!r}).Process(target=time.sleep, args=(30,)); p.start(); p.join()\n"
    )
    api = subprocess.Popen([SYSTEM_PY, "-c", code])
    try:
        assert _wait_until(lambda: os.path.exists(marker))
        time.sleep(0.3)  # the helper runs; the "imports" go on
        assert not imports_done(api.pid)
        os.unlink(marker)  # the "imports" end: the engine starts
        assert _wait_until(lambda: imports_done(api.pid)), "the engine's start was not seen"
    finally:
        subprocess.run(["pkill", "-KILL", "-P", str(api.pid)], check=False)
        api.kill()
        api.wait()
    assert not imports_done(api.pid)  # gone: False, no error
