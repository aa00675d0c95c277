"""The serve keeper's first start-up step: read what vLLM will read into the page cache, with ``STATUS=prewarming N%``
and watchdog pings from the progress callback (a stalled read stops the pings). A failed prewarm is logged and never
stops serving.

``[prewarm] overlap = true`` (issue 23, the default): nothing is read before vLLM starts, and nothing while its API
server imports. A thread waits until those imports are done (the API server started its engine process:
serving/child.imports_done) or there is nothing left to wait for (vLLM already serves: a stand-in or a wrapper that
never starts an engine process; or no start is under way), then reads the model's files (``[prewarm]`` paths +
``[vllm] model``) while the engine imports, then the agent-owned compile caches (read after the weights by vLLM
too). Measured on an H200 (bench/README.md): any read beside the API server's import slowed it — the weights from
~10 s to 16-21 s, the serving stack (4.6 GB) from 13.1 to 17.2 s — so warming beside it was slower than no warm-up;
the engine's import is CPU-bound and hides the weights' read. The stack is not read there: vLLM's own import reads
it. ``[prewarm] io_priority`` (idle by default): those reads run at the idle I/O class, behind vLLM's own
(bench/io_priority.py).

``stack_learned = true`` (overlap only; off by default): before vLLM starts, the pages of its stack that a serving
vLLM had resident, learned by mincore at READY (prewarm/learned.py). Measured on the H200 (2.24 GB of 6,989 files,
read in 3.8-4.1 s): the API server's import became 3-4 s shorter, which the read itself cost; read beside the start
instead, no gain either. A disk that reads small ranges faster than that virtio disk may gain.

``overlap = false``: all before vLLM starts — the stack (the vLLM interpreter and the libraries on its path,
prewarm/stack.py; ``[prewarm] stack``), then the weights, then the compile caches. ``lock`` needs the pages held by
this process: it warms all first."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Optional

if TYPE_CHECKING:
    from vllm_nodeagent.config import PrewarmConfig
    from vllm_nodeagent.daemon.loop import Loop
    from vllm_nodeagent.prewarm.reader import ReaderOptions
    from vllm_nodeagent.prewarm.targets import WarmFile
    from vllm_nodeagent.prewarm.warm import PrewarmResult


# How long the weights wait for vLLM's imports before they are read anyway (a command that is not vLLM's own
# interpreter, e.g. a wrapper script, never shows the sign): well past a cold import on the slowest machine seen.
IMPORTS_WAIT_S = 120.0
_IMPORTS_POLL_S = 0.2


# Why the weights beside the start stopped waiting: the one reason that is the sign itself.
IMPORTS_DONE = "imports done"


def _now() -> Optional[str]:
    return IMPORTS_DONE


def prewarm_before_start(loop: Loop, may_read: Callable[[], Optional[str]] = _now) -> Any:
    """Prewarm what the config names; the mlock handle to keep while the daemon runs (``[prewarm] lock``), or None.
    ``may_read``: None while the vLLM just started still imports (the weights beside the start wait), else why
    they may be read now (``IMPORTS_DONE``, or e.g. "vLLM serving")."""
    ctx = loop.ctx
    pcfg = ctx.config.prewarm
    if pcfg is None:
        return None
    from vllm_nodeagent.prewarm.targets import config_targets

    targets, env = config_targets(ctx.config)
    if pcfg.overlap and not pcfg.lock:
        # Measured on an H200 (bench/README.md): any read beside vLLM's API-server import slows it; the weights
        # wait in a daemon thread for the imports to be done (a SIGTERM does not wait). ``stack_learned``: the
        # stack's learned pages first, before vLLM starts (no gain on the H200's virtio disk: docs/prewarm.md).
        used = _learned_stack(loop, pcfg, env) if pcfg.stack and pcfg.stack_learned else 0
        threading.Thread(
            target=_background,
            args=(loop, pcfg, targets, env, may_read, used),
            name="prewarm-beside-start",
            daemon=True,
        ).start()
        return None
    stack = _stack(loop, pcfg)
    if not targets and not stack:
        return None
    stack += _compile_caches(loop)  # after the weights: vLLM reads them after its weights too
    result = _warm(loop, pcfg, targets, env, stack, _progress(loop), lock=pcfg.lock, what="all")
    return result.locked if result is not None else None


def _progress(loop: Loop) -> Callable[[int, int], None]:
    loop.notify.status("prewarming")
    last = [-1]

    def progress(done: int, total: int) -> None:  # called from the reader threads
        pct = int(done * 100 / total) if total else 100
        if pct != last[0]:
            last[0] = pct
            loop.notify.status(f"prewarming {pct}%")
            loop.watchdog(loop.clock())  # a stalled prewarm stops pinging

    return progress


def _learned_stack(loop: Loop, pcfg: PrewarmConfig, env: dict[str, str]) -> int:
    """Before vLLM starts: the pages of its stack a serving vLLM had resident (prewarm/learned.py), many reads in
    flight (small ranges of many files). Nothing before the first start that served: it learns them. Bytes read
    from the budget."""
    from vllm_nodeagent.prewarm.learned import learned_pages

    try:
        files, stale = learned_pages(loop.ctx.host, loop.ctx.config.agent.state_dir)
    except Exception as exc:  # never let a warm-up bug stop the start
        loop.log.error("prewarm_failed", part="stack", error=f"{type(exc).__name__}: {exc}")
        return 0
    if stale:
        loop.log.info("prewarm_stack_changed", files_left_out=stale, detail="changed since learned; relearned at READY")
    if not files:
        return 0
    from vllm_nodeagent.prewarm.reader import LEARNED_READER

    done = _warm(loop, pcfg, [], env, files, _progress(loop), False, "stack", reader=LEARNED_READER)
    return done.total_bytes if done is not None else 0


def _stack(loop: Loop, pcfg: PrewarmConfig) -> list[WarmFile]:
    if not pcfg.stack:
        return []
    from vllm_nodeagent.prewarm.stack import config_stack

    stack, errors = config_stack(loop.ctx.config, loop.ctx.host)
    for err in errors:
        loop.log.warning("prewarm_error", detail=err)
    return stack


def _compile_caches(loop: Loop) -> list[WarmFile]:
    from vllm_nodeagent.prewarm.stack import config_compile_caches

    return config_compile_caches(loop.ctx.config, loop.ctx.host)


def _background(
    loop: Loop,
    pcfg: PrewarmConfig,
    targets: list[str],
    env: dict[str, str],
    may_read: Callable[[], Optional[str]],
    used: int = 0,
) -> None:
    """Beside vLLM's start: nothing while its API server imports; then the weights, then the compile caches.
    ``used``: bytes of the budget the stack before the start took."""
    waited, why = _wait_for_imports(loop, may_read)
    loop.log.info("prewarm_weights_begin", waited_s=round(waited, 3), imports_done=why == IMPORTS_DONE, after=why)
    prio = "" if pcfg.io_priority == "default" else pcfg.io_priority
    if targets:
        done = _warm(loop, pcfg, targets, env, [], None, False, "weights", used, io_priority=prio)
        used += done.total_bytes if done is not None else 0
    try:
        caches = _compile_caches(loop)
    except Exception as exc:  # never let a warm-up bug reach the daemon
        loop.log.error("prewarm_failed", part="compile_cache", error=f"{type(exc).__name__}: {exc}")
        caches = []
    if caches:
        _warm(loop, pcfg, [], env, caches, None, False, "compile_cache", used, pcfg.threads or 16, io_priority=prio)


def _wait_for_imports(loop: Loop, may_read: Callable[[], Optional[str]]) -> tuple[float, str]:
    """Seconds waited, and why the wait ended (``may_read``'s reason; "timeout" when IMPORTS_WAIT_S passed,
    "probe failed" when the probe raised: the weights are read anyway)."""
    start = time.monotonic()
    while time.monotonic() - start < IMPORTS_WAIT_S:
        try:
            why = may_read()
        except Exception as exc:  # a probe bug must not hold the weights back for two minutes
            loop.log.warning("prewarm_imports_probe_failed", error=f"{type(exc).__name__}: {exc}")
            return time.monotonic() - start, "probe failed"
        if why is not None:
            return time.monotonic() - start, why
        time.sleep(_IMPORTS_POLL_S)
    return time.monotonic() - start, "timeout"


def _warm(
    loop: Loop,
    pcfg: PrewarmConfig,
    targets: list[str],
    env: dict[str, str],
    stack: list[WarmFile],
    progress: Optional[Callable[[int, int], None]],
    lock: bool,
    what: str,
    used: int = 0,
    threads: int = 0,
    reader: Optional[ReaderOptions] = None,
    io_priority: str = "",
) -> Optional[PrewarmResult]:
    """One prewarm pass; ``used``: bytes of the budget an earlier pass (the stack) already took."""
    from vllm_nodeagent.prewarm.targets import budget_from_config, vllm_hf_cache
    from vllm_nodeagent.prewarm.warm import prewarm

    try:
        budget = max(0, budget_from_config(loop.ctx.host, pcfg.memory_budget_fraction) - used)
        result = prewarm(
            targets,
            host=loop.ctx.host,
            budget_bytes=budget,
            threads=threads or pcfg.threads,  # the stack: many small files, more reads in flight
            lock=lock,
            progress=progress,
            hf_cache=vllm_hf_cache(loop.ctx.config, loop.ctx.host, env),
            stack=stack,
            reader=reader,
            io_priority=io_priority,
        )
    except Exception as exc:  # a failed prewarm must not stop serving; it is logged
        loop.log.error("prewarm_failed", part=what, error=f"{type(exc).__name__}: {exc}")
        return None
    if what in ("all", "weights"):  # the metric is the model's residency
        loop.metrics.set_prewarm(result.resident_after_bytes, result.resident_fraction)
    for err in result.errors:
        loop.log.warning("prewarm_error", detail=err)
    loop.log.info(
        "prewarm_done",
        part=what,
        files=result.files,
        total_bytes=result.total_bytes,
        resident_bytes=result.resident_after_bytes,
        stack_files=result.stack_files,
        stack_bytes=result.stack_bytes,
        seconds=round(result.seconds, 3),
        gbps=round(result.gbps, 3),
        skipped_bytes=result.skipped_bytes,
        skipped_first=result.skipped[0][0] if result.skipped else "",
        locked=result.locked is not None,
        reader=result.reader,
    )
    return result


def learn_after_ready(loop: Loop, pid: int) -> Optional[threading.Thread]:
    """vLLM serves: remember the libraries it mapped (prewarm/stack.learn: what ``overlap = false`` reads) and,
    in a thread (a walk of the environment and a mincore of each file: seconds), the pages of its stack that are
    resident now (prewarm/learned.py: what the next start reads first). Never fails the start. The thread, if one
    was started (tests wait for it)."""
    pcfg = loop.ctx.config.prewarm
    if pcfg is None or not pcfg.stack:
        return None
    from vllm_nodeagent.host import HostError
    from vllm_nodeagent.prewarm.stack import learn

    try:
        n = learn(loop.ctx.host, loop.ctx.config.agent.state_dir, pid)
    except (HostError, OSError, ValueError) as exc:
        loop.log.warning("prewarm_learn_failed", error=str(exc))
        return None
    loop.log.info("prewarm_learned", libraries=n)
    if not (pcfg.overlap and pcfg.stack_learned):
        return None
    thread = threading.Thread(target=_learn_pages, args=(loop,), name="prewarm-learn-pages", daemon=True)
    thread.start()
    return thread


_learning = threading.Lock()  # one learning walk at a time: a READY soon after another does not start a second


def _learn_pages(loop: Loop) -> None:
    from vllm_nodeagent.prewarm.learned import learn_pages
    from vllm_nodeagent.prewarm.stack import config_stack

    if not _learning.acquire(blocking=False):
        loop.log.info("prewarm_learn_skipped", detail="the previous READY's learning still runs")
        return
    t0 = time.monotonic()
    try:
        stack, errors = config_stack(loop.ctx.config, loop.ctx.host, every_library=True)
        if errors and not stack:
            loop.log.warning("prewarm_learn_failed", error=errors[0])
            return
        files, nbytes = learn_pages(loop.ctx.host, loop.ctx.config.agent.state_dir, stack)
    except Exception as exc:  # a learning bug must never reach the daemon: the next start just reads less
        loop.log.warning("prewarm_learn_failed", error=f"{type(exc).__name__}: {exc}")
        return
    finally:
        _learning.release()
    loop.log.info(
        "prewarm_learned_pages", files=files, bytes=nbytes, of_files=len(stack), seconds=round(time.monotonic() - t0, 3)
    )
