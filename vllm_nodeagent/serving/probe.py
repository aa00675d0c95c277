"""The one vLLM argument probe that doctor and launch share: as the configured user, in the launch environment
(cache directories included), through the probe cache (probe_cache.py) where this process may keep one.
The probe child itself and the flag tables are args.py's.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Callable, Optional

from vllm_nodeagent import log
from vllm_nodeagent.config import VllmConfig
from vllm_nodeagent.host.fsafe import own_dir
from vllm_nodeagent.serving.args import PROBE_FLAGS, ProbeResult, probe, resolve_python
from vllm_nodeagent.serving.env import (
    SAFE_PATH,
    LaunchError,
    RunAs,
    cache_dir_for,
    child_env,
    prepare_cache_dir,
    resolve_user,
)
from vllm_nodeagent.serving.probe_cache import cached_probe, probe_inputs

if TYPE_CHECKING:
    from vllm_nodeagent.context import Context


def probe_vllm(cfg: VllmConfig, run_as: RunAs, env: dict[str, str], cache_dir: str = "") -> ProbeResult:
    """Run vLLM's own parser over ``[vllm] args`` in a short-lived subprocess, as ``run_as`` with ``env``
    (the launch environment): never vLLM's code as root unless root is the configured user. With ``cache_dir``
    the answer comes from (and goes to) the probe cache there while the install and the inputs are unchanged."""
    interp, why = resolve_python(list(cfg.command), cfg.python, env.get("PATH", SAFE_PATH))
    if not interp:
        return ProbeResult(False, reason=why)
    uid = run_as.uid if run_as.switch else os.geteuid()
    inputs = probe_inputs(interp, list(cfg.args), PROBE_FLAGS, env, uid)
    return cached_probe(cache_dir, inputs, lambda: probe(interp, list(cfg.args), env=env, run_as=run_as))


def probe_cache_dir(ctx: Context, user_cache: str) -> str:
    """Where this process keeps the probe cache: root's state dir, else (the serve unit, as the vLLM user) its
    own cache dir. probe_cache refuses either when another uid could write it."""
    if os.geteuid() == 0:
        return str(ctx.host.path(ctx.config.agent.state_dir))
    return user_cache


def probe_as_user(ctx: Context, cfg: VllmConfig, prepare: bool) -> tuple[RunAs, str, ProbeResult]:
    """The one probe doctor and launch share: the configured user, the launch environment (cache directories
    included; ``prepare`` creates them, doctor only names them). Raises LaunchError for an unusable user."""
    who = resolve_user(cfg.user, ctx.host)
    base = ctx.config.agent.cache_dir
    cache = prepare_cache_dir(ctx.host, base, who) if prepare else cache_dir_for(ctx.host, base, who)
    if prepare or os.path.isdir(cache):
        return who, cache, probe_vllm(cfg, who, child_env(cfg, who, [], None, cache), probe_cache_dir(ctx, cache))
    # Before the first launch (doctor, a dry run) the cache dir does not exist and creating it is launch's job;
    # vLLM's import would fail creating it (seen on the H100: PermissionError), so the probe gets a scratch one.
    with scratch_cache_dir(who) as scratch:
        return who, cache, probe_vllm(cfg, who, child_env(cfg, who, [], None, scratch))


class ProbeBeside:
    """The probe in a thread, beside a vLLM start that does not wait for it (plan.start_plan). ``result()`` is
    None while it runs; ``wait()`` blocks until it answered."""

    def __init__(self, run: Callable[[], ProbeResult]) -> None:
        self._run = run
        self._result: Optional[ProbeResult] = None
        self.waited = False
        # a daemon thread: a SIGTERM during the start does not wait for vLLM's import to finish
        self._thread = threading.Thread(target=self._work, name="vllm-args-probe", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        try:
            self._result = self._run()
        except Exception as exc:  # a bug here must neither leave the start waiting for ever nor print a traceback
            self._result = ProbeResult(False, reason=f"probe failed: {type(exc).__name__}: {exc}")

    def result(self) -> Optional[ProbeResult]:
        return None if self._thread.is_alive() else self._result

    def wait(self, cancelled: Optional[Callable[[], bool]] = None) -> ProbeResult:
        """The answer; with ``cancelled`` (the daemon's stop request) polled while it runs, LaunchError when it
        says so: a SIGTERM does not wait for vLLM's import (10-30 s)."""
        self.waited = True
        while self._thread.is_alive():
            self._thread.join(0.1)
            if cancelled is not None and self._thread.is_alive() and cancelled():
                raise LaunchError("stopped while waiting for vLLM's argument probe")
        return self._result if self._result is not None else ProbeResult(False, reason="the probe gave no answer")


def probe_beside(
    ctx: Context, cfg: VllmConfig, prepared: Optional[Callable[[RunAs, str], object]] = None
) -> tuple[RunAs, str, ProbeBeside]:
    """probe_as_user(prepare=True), started in a thread: the user, the prepared cache dir, the running probe.
    ``prepared(user, cache dir)`` runs once the directory exists and before anything runs in it (the compile
    caches are kept or cleared there: compile_keep.py)."""
    who = resolve_user(cfg.user, ctx.host)
    cache = prepare_cache_dir(ctx.host, ctx.config.agent.cache_dir, who)
    if prepared is not None:
        prepared(who, cache)
    env = child_env(cfg, who, [], None, cache)
    return who, cache, ProbeBeside(lambda: probe_vllm(cfg, who, env, probe_cache_dir(ctx, cache)))


@contextlib.contextmanager
def scratch_cache_dir(who: RunAs) -> Iterator[str]:
    """A private temporary cache dir for one probe, owned by its user, removed afterwards."""
    scratch = tempfile.mkdtemp(prefix="vllm-nodeagent-probe-")
    try:
        if who.switch:
            own_dir(scratch, who.uid, who.gid)  # by fd: mkdtemp's random name in sticky /tmp, never a link
        yield scratch
    finally:
        try:
            shutil.rmtree(scratch)
        except OSError as exc:
            log.get().warning("vllm_probe_scratch_left", path=scratch, error=exc.strerror or str(exc))
