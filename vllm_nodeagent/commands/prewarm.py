"""``vllm-nodeagent prewarm``: warm the configured (or named) model files into the page cache and say what it did:
a progress bar on a terminal, one summary line or ``--json``, and with ``--lock`` hold the pages until a signal.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any, Callable, Optional

from vllm_nodeagent import log
from vllm_nodeagent.config import PrewarmConfig
from vllm_nodeagent.context import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Context, print_json
from vllm_nodeagent.host import HostError
from vllm_nodeagent.host.parse import ParseError
from vllm_nodeagent.prewarm.stack import config_compile_caches, config_stack
from vllm_nodeagent.prewarm.targets import (
    BudgetError,
    WarmFile,
    budget_from_config,
    config_targets,
    parse_budget,
    vllm_hf_cache,
)
from vllm_nodeagent.prewarm.warm import prewarm


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
            self.stream.write(
                f"\rprewarm [{'#' * filled}{'.' * (width - filled)}] {_human(done)}/{_human(total)}"
                f"  {rate / 1e9:.2f} GB/s  ETA {eta:.0f}s "
            )
            self.stream.flush()
            self._drawn = True
        elif now - self._last_log >= self.log_interval or done >= total:
            self._last_log = now
            log.get().info(
                "prewarm.progress", done_bytes=done, total_bytes=total, gbps=round(rate / 1e9, 3), eta_s=round(eta, 1)
            )

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
    cfg = ctx.config.prewarm or PrewarmConfig()
    targets: list[str] = list(args.targets)
    env: Mapping[str, str] = os.environ
    hf_cache = vllm_hf_cache(None, ctx.host, env)  # TARGETs named here: the process environment and home
    stack: list[WarmFile] = []
    stack_errors: list[str] = []
    if not targets:
        targets, env = config_targets(ctx.config)
        hf_cache = vllm_hf_cache(ctx.config, ctx.host, env)  # where the configured vLLM looks (its user's ~)
        if cfg.stack:  # the default prewarm: the serving stack first, then the weights (issue 23)
            stack, stack_errors = config_stack(ctx.config, ctx.host)
        stack += config_compile_caches(ctx.config, ctx.host)  # small beside the weights: read with the stack
        if not targets and not stack:
            print(
                "vllm-nodeagent: prewarm: no TARGET given and none configured ([prewarm] paths, [vllm] model)",
                file=sys.stderr,
            )
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
        result = prewarm(
            targets,
            host=ctx.host,
            budget_bytes=budget,
            threads=threads,
            lock=args.lock,
            progress=bar,
            hf_cache=hf_cache,
            stack=stack,
        )
    finally:
        bar.close()
    for err in stack_errors:  # no vLLM user or interpreter to ask: the weights are still warmed, not a failure
        print(f"vllm-nodeagent: prewarm: {err}", file=sys.stderr)
    for err in result.errors:
        print(f"vllm-nodeagent: prewarm: {err}", file=sys.stderr)
    if result.skipped:
        print(
            f"vllm-nodeagent: prewarm: budget {_human(budget)}: {len(result.skipped)} file(s), "
            f"{_human(result.skipped_bytes)} not warmed (the serving stack first, then the weights largest "
            f"first, what fits), first left out: {result.skipped[0][0]}",
            file=sys.stderr,
        )
    if args.json:
        data = result.to_json()
        for key in ("reader", "residency_method"):
            data[key] = data[key] or None  # the JSON contract: null, not "", for unknown
        print_json(data, "prewarm")
    else:
        print(
            f"files {result.files}  total {_human(result.total_bytes)}  "
            f"resident before {_human(result.resident_before_bytes)}  "
            f"after {_human(result.resident_after_bytes)} ({100 * result.resident_fraction:.1f}%)  "
            f"read {_human(result.read_bytes)} in {result.seconds:.2f}s ({result.gbps:.2f} GB/s)"
            + (f"  (serving stack: {result.stack_files} files, {_human(result.stack_bytes)})" if stack else "")
        )
    sys.stdout.flush()
    code = EXIT_OK if result.ok else EXIT_FAILED
    if args.lock and result.locked is not None:
        locked = result.locked

        def announce() -> None:
            print(
                f"vllm-nodeagent: prewarm: locked {_human(locked.bytes)} in {locked.files} file(s); "
                "holding until SIGINT/SIGTERM",
                file=sys.stderr,
                flush=True,
            )

        try:
            hold_until_signal(announce)
        finally:
            locked.release()
    return code
