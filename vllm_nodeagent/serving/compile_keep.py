"""Keep or clear vLLM's compile caches at a start, and doctor's ``vllm.compile_cache`` (issue 23.4).

At the agent's start of vLLM (plan.start_plan: the daemon's first start and each reload, before the argument probe
and vLLM run in the cache directory; ``at_restart``: a crash restart with the same plan): the fingerprint of what
the caches depend on (compile_cache.py) against the one stored beside them. Unchanged: kept
(``compile_cache_kept``). Changed, missing, or ``[agent] keep_compile_cache = false``: the agent's compile caches
in the directory are emptied through the ground floor (host/fremove: by fds, nothing the vLLM user planted is
followed) and the new fingerprint written (``compile_cache_cleared``, naming the fields that changed). A cache that
cannot be managed never stops a start: one warning line, and vLLM's own keys still apply.

Proof: a record written at a start says ``proven: false`` until that start passes the readiness gate
(``mark_proven``, from the serve keeper at READY). A start that finds the same fingerprint unproven empties the
caches all the same (``changed=unproven``): the start that wrote them crashed, timed out or was stopped before it
served, and a half-written Inductor/Triton/vLLM entry could fail every start after it. A start that served keeps
its proof through later crashes; a start with another launch (command, model, args, env: vLLM may compile new
entries) keeps the caches but leaves them unproven until it serves.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from vllm_nodeagent import log
from vllm_nodeagent.checks.base import CheckResult, Fix, Registered
from vllm_nodeagent.checks.status import Status
from vllm_nodeagent.config import VllmConfig
from vllm_nodeagent.host import HostError, fsafe
from vllm_nodeagent.host.fremove import empty_dir
from vllm_nodeagent.serving import compile_cache as cc
from vllm_nodeagent.serving.args import resolve_python
from vllm_nodeagent.serving.env import CACHE_VARS, SAFE_PATH, RunAs, child_env

if TYPE_CHECKING:
    from vllm_nodeagent.checks.base import Probe
    from vllm_nodeagent.context import Context
    from vllm_nodeagent.nvml import Nvml
    from vllm_nodeagent.topology import Topology

CHECK_ID = "vllm.compile_cache"


@dataclass(frozen=True)
class Verdict:
    current: dict[str, Any]  # the record for this configuration now
    stored: Optional[dict[str, Any]]
    changed: list[str]  # [] = unchanged; ["fingerprint"] = none stored; ["keep_compile_cache"] = off
    subdirs: tuple[str, ...]  # the compile caches the agent put in the directory (what a clear empties)


def cache_host_dir(base: str, who: RunAs) -> str:
    """The cache directory as a host path (env.prepare_cache_dir's leaf)."""
    return f"{base.rstrip('/')}/{who.name}"


def owner_of(who: RunAs) -> int:
    return who.uid if who.switch else os.geteuid()


def judge(
    ctx: Context,
    cfg: VllmConfig,
    who: RunAs,
    cache_real: str,
    topo: Topology,
    nvml: Optional[Nvml] = None,
    open_nvml: bool = True,
) -> Verdict:
    """The current fingerprint and how it compares with the stored one (reads only). NVML: ``nvml`` (doctor's
    session), else one opened here when ``open_nvml`` (a start)."""
    env = child_env(cfg, who, [], None, cache_real)
    python, _ = resolve_python(list(cfg.command), cfg.python, env.get("PATH", SAFE_PATH))
    model = cfg.model or cc.arg_value(cfg.args, "--model")
    opened = ctx.open_nvml()[0] if nvml is None and open_nvml else None
    try:
        fields = cc.current_fields(python, env, model, list(cfg.args), topo, nvml or opened, ctx.host)
    finally:
        if opened is not None:
            opened.close()
    current = cc.record(fields)
    stored = cc.read_stored(ctx.host, cache_host_dir(ctx.config.agent.cache_dir, who), owner_of(who))
    changed = cc.differing(stored, current)
    if not ctx.config.agent.keep_compile_cache:
        changed = ["keep_compile_cache"]
    return Verdict(current, stored, changed, compile_subdirs(env, cache_real))


def compile_subdirs(env: dict[str, str], cache_real: str) -> tuple[str, ...]:
    """The compile caches in the cache directory: each of CACHE_VARS still pointing there (``[vllm] env`` may point
    one elsewhere: that one is the operator's to manage). Nothing else there is cleared: with an unusable home,
    HOME and XDG_CACHE_HOME are the cache directory too, and the Hugging Face cache (the weights) lies under it."""
    return tuple(sub for var, sub in CACHE_VARS.items() if env.get(var) == os.path.join(cache_real, sub))


def launch_of(cfg: VllmConfig) -> str:
    """The digest of what vLLM is started with, as far as its compile keys go (the config's side of them)."""
    parts = {"command": list(cfg.command), "python": cfg.python, "model": cfg.model, "args": list(cfg.args)}
    return cc.launch_digest({**parts, "env": dict(cfg.env)})


def to_clear(v: Verdict) -> list[str]:
    """Why this start empties the caches ([] = it keeps them): what changed, else a record no start served."""
    return v.changed or ([] if cc.is_proven(v.stored) else [cc.UNPROVEN])


def keep_or_clear(ctx: Context, cfg: VllmConfig, who: RunAs, cache_real: str, topo: Topology) -> str:
    """At a start: keep the caches or empty them and store the new fingerprint, unproven until this start serves
    (``mark_proven``); the action taken ("kept", "cleared", or "unmanaged" when the directory could not be
    handled: logged, the start goes on)."""
    logger = log.get()
    host_dir = cache_host_dir(ctx.config.agent.cache_dir, who)
    launch = launch_of(cfg)
    try:
        v = judge(ctx, cfg, who, cache_real, topo)
        changed = to_clear(v)
        if not changed and v.stored is not None:
            same = v.stored.get("launch") == launch  # else vLLM may compile new entries: unproven until it serves
            proof = str(v.stored.get("proven_at", "")) if same else None
            if not same or v.stored.get("digest") != v.current["digest"]:  # or said more exactly (an HF commit)
                write_fingerprint(ctx, who, host_dir, cc.with_proof(v.current, launch, proof))
            shown = "unproven until this start serves (another launch)" if proof is None else f"proven {proof}".strip()
            logger.info("compile_cache_kept", dir=cache_real, digest=v.current["digest"][:16], proof=shown)
            return "kept"
        owners = frozenset({owner_of(who)})
        done = empty_dir(str(ctx.host.root), host_dir, owners, only=v.subdirs)
        write_fingerprint(ctx, who, host_dir, cc.with_proof(v.current, launch, None))
    except (HostError, OSError) as exc:
        logger.warning("compile_cache_unmanaged", dir=cache_real, error=str(exc))
        return "unmanaged"
    if changed == ["keep_compile_cache"]:
        detail = "[agent] keep_compile_cache = false: cleared at each start"
    else:
        detail = cc.describe(v.stored, v.current, changed)
    logger.info(
        "compile_cache_cleared", dir=cache_real, changed=",".join(changed), detail=detail, removed=done.summary()
    )
    if done.left_count:
        logger.warning("compile_cache_left", dir=cache_real, left=done.left_count, detail="; ".join(done.left))
    return "cleared"


def at_restart(ctx: Context, topo: Topology) -> str:
    """A restart after a crash reuses the daemon's plan: the caches are judged again all the same (a start is a
    start: ``keep_compile_cache = false`` clears here too, and an install changed meanwhile is seen)."""
    from vllm_nodeagent.serving.env import cache_dir_for, resolve_user

    cfg = ctx.config.vllm or VllmConfig()
    who = resolve_user(cfg.user, ctx.host)
    return keep_or_clear(ctx, cfg, who, cache_dir_for(ctx.host, ctx.config.agent.cache_dir, who), topo)


def mark_proven(ctx: Context) -> None:
    """vLLM passed the readiness gate (the serve keeper calls this at READY): ``prove`` for the configured user.
    Never raises: a record that cannot be written is one warning line, and the next start clears the caches."""
    from vllm_nodeagent.serving.env import LaunchError, resolve_user

    cfg = ctx.config.vllm or VllmConfig()
    try:
        prove(ctx, cfg, resolve_user(cfg.user, ctx.host))
    except (HostError, OSError, LaunchError) as exc:
        log.get().warning("compile_cache_unmanaged", dir=ctx.config.agent.cache_dir, error=f"marking it proven: {exc}")


def prove(ctx: Context, cfg: VllmConfig, who: RunAs) -> Optional[str]:
    """The record this start wrote says that it served, and when (returned; None when nothing was to mark: no
    record, one already proven, or one written for another launch)."""
    host_dir = cache_host_dir(ctx.config.agent.cache_dir, who)
    stored = cc.read_stored(ctx.host, host_dir, owner_of(who))
    if stored is None or cc.is_proven(stored) or stored.get("launch") != launch_of(cfg):
        return None
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_fingerprint(ctx, who, host_dir, cc.with_proof(stored, launch_of(cfg), at))
    log.get().info("compile_cache_proven", dir=host_dir, digest=str(stored.get("digest", ""))[:16], at=at)
    return at


def write_fingerprint(ctx: Context, who: RunAs, host_dir: str, rec: dict[str, Any]) -> None:
    """The record beside the caches, atomically, owned by the vLLM user (mode 0600)."""
    owner = owner_of(who)
    dfd = fsafe.open_dir(str(ctx.host.root), host_dir, "vLLM cache dir", frozenset({owner}))
    try:
        uid, gid = (who.uid, who.gid) if who.switch else (-1, -1)
        fsafe.replace_at(dfd, cc.FINGERPRINT_FILE, cc.encode(rec), f"{host_dir}/{cc.FINGERPRINT_FILE}", 0o600, uid, gid)
    finally:
        os.close(dfd)


def doctor_check(
    ctx: Context, cfg: VllmConfig, who: Optional[RunAs], topo: Topology, nvml: Optional[Nvml] = None
) -> CheckResult:
    """pass: the stored fingerprint matches (the next start keeps the caches); warn: the next start clears them
    (which fields differ); skip: no cache yet (or no user to own one)."""
    if who is None:
        return CheckResult(CHECK_ID, Status.SKIP, None, None, "", "no usable [vllm] user: no cache directory")
    from vllm_nodeagent.serving.env import cache_dir_for

    cache_real = cache_dir_for(ctx.host, ctx.config.agent.cache_dir, who)
    host_dir = cache_host_dir(ctx.config.agent.cache_dir, who)
    desired = "kept at the next start"
    if not cc.is_dir_of(ctx.host, host_dir, owner_of(who)):
        return CheckResult(CHECK_ID, Status.SKIP, None, desired, "", f"no compile cache yet ({cache_real})")
    v = judge(ctx, cfg, who, cache_real, topo, nvml, open_nvml=False)
    if v.stored is None and not cc.cache_has_entries(ctx.host, host_dir, v.subdirs):
        return CheckResult(CHECK_ID, Status.SKIP, None, desired, "", f"no compile cache yet ({cache_real})")
    short = v.current["digest"][:16]
    changed = to_clear(v)
    if not changed:
        at = str(v.stored.get("proven_at", "")) if v.stored else ""
        proof = f"proven by a start at {at}" if at else "written before starts were proven"
        if v.stored is not None and v.stored.get("launch") not in (None, launch_of(cfg)):
            proof += "; the configured launch differs: the next start keeps it, proven once that start serves"
        return CheckResult(
            CHECK_ID, Status.PASS, f"fingerprint {short}", desired, "", f"unchanged, {proof}: {cache_real}"
        )
    if changed == [cc.UNPROVEN]:
        why = cc.NEVER_SERVED
        note = (
            f"the next vLLM start empties {cache_real} and compiles again: the start that wrote it has not served "
            "(one still loading proves it once it serves); if vLLM keeps failing before it serves, see its log"
        )
    elif changed == ["keep_compile_cache"]:
        why = "[agent] keep_compile_cache = false: every start clears it"
        note = "set [agent] keep_compile_cache = true to keep the compile caches across starts"
    else:
        why = cc.describe(v.stored, v.current, changed)
        note = (
            f"the next vLLM start empties {cache_real} and compiles again ({', '.join(changed)} changed); "
            "expected after an upgrade or a model/GPU change, else restore what changed"
        )
    current = "unproven" if changed == [cc.UNPROVEN] else f"differs: {', '.join(changed)}"
    return CheckResult(CHECK_ID, Status.WARN, current, desired, note, why, Fix(note=note))


def checks(probe: Probe) -> list[CheckResult]:
    """Doctor's entry (checks/registry.py): the configured vLLM's cache, skipped when nothing is launched."""
    from vllm_nodeagent.serving.env import LaunchError, resolve_user
    from vllm_nodeagent.serving.plan import something_to_launch

    ctx = probe.context()
    cfg = ctx.config.vllm
    if cfg is None or not something_to_launch(cfg):
        return [CheckResult(CHECK_ID, Status.SKIP, None, None, "", "nothing to launch: no compile cache")]
    try:
        who: Optional[RunAs] = resolve_user(cfg.user, ctx.host)
    except LaunchError:
        who = None
    try:
        return [doctor_check(ctx, cfg, who, probe.topo, probe.nvml)]
    except (HostError, OSError) as exc:  # a host fault is one line, never a traceback
        note = f"check the owner and mode of [agent] cache_dir ({ctx.config.agent.cache_dir}) and what is in it"
        why = f"cannot judge the compile cache: {exc}"
        return [CheckResult(CHECK_ID, Status.WARN, None, None, note, why, Fix(note=note))]


CHECKS = Registered((CHECK_ID,), checks)
