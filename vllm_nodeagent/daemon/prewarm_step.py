"""The serve keeper's first start-up step: read the model's files (``[prewarm]`` paths + ``[vllm] model``) into the
page cache before vLLM starts, with ``STATUS=prewarming N%`` and watchdog pings from the progress callback (a
stalled read stops the pings). A failed prewarm is logged and never stops serving."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vllm_nodeagent.daemon.loop import Loop


def prewarm_before_start(loop: Loop) -> Any:
    """Prewarm what the config names; the mlock handle to keep while the daemon runs (``[prewarm] lock``), or None."""
    ctx = loop.ctx
    pcfg = ctx.config.prewarm
    if pcfg is None:
        return None
    from vllm_nodeagent.prewarm.targets import budget_from_config, config_targets, hf_cache_dir
    from vllm_nodeagent.prewarm.warm import prewarm

    targets, env = config_targets(ctx.config)
    if not targets:
        return None
    loop.notify.status("prewarming")
    last = [-1]

    def progress(done: int, total: int) -> None:  # called from the reader threads
        pct = int(done * 100 / total) if total else 100
        if pct != last[0]:
            last[0] = pct
            loop.notify.status(f"prewarming {pct}%")
            loop.watchdog(loop.clock())  # a stalled prewarm stops pinging

    try:
        budget = budget_from_config(ctx.host, pcfg.memory_budget_fraction)
        result = prewarm(
            targets,
            host=ctx.host,
            budget_bytes=budget,
            threads=pcfg.threads,
            lock=pcfg.lock,
            progress=progress,
            hf_cache=hf_cache_dir(env),
        )
    except Exception as exc:  # a failed prewarm must not stop serving; it is logged
        loop.log.error("prewarm_failed", error=f"{type(exc).__name__}: {exc}")
        return None
    loop.metrics.set_prewarm(result.resident_after_bytes, result.resident_fraction)
    for err in result.errors:
        loop.log.warning("prewarm_error", detail=err)
    loop.log.info(
        "prewarm_done",
        files=result.files,
        total_bytes=result.total_bytes,
        resident_bytes=result.resident_after_bytes,
        gbps=round(result.gbps, 3),
        skipped_bytes=result.skipped_bytes,
        locked=result.locked is not None,
    )
    return result.locked
