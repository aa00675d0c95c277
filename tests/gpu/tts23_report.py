#!/usr/bin/env python3
"""The issue-23 table from the H200 runs (tests/gpu/h200-2026-12-02-tts): every case, every round, the phases.

    python3 tests/gpu/tts23_report.py tests/gpu/h200-2026-12-02-tts

Rounds: machine A (the first lease; the stack warm-up then read every .py/.pyc/.so of the path, before vLLM
started) is round 1; machine B (a fresh lease: the stack is the .pyc + the libraries a serving vLLM had mapped)
gives rounds 2 (its r1 call) and 3 (its r5 call). The ``warmup`` rows (vLLM's first start on a fresh machine)
are in no median.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any, Optional

ORDER = (
    "warm",
    "cold",
    "warmup_full",
    "warmup_overlap",
    "stack_beside",
    "warmup_default",
    "weights_overlap",
    "warmup_learned",
    "unlearned",
    "learned_beside",
    "weights_low",
    "weights_idle",
    "warm_debug",
    "warm_importtime",
    "compiled_first",
    "compiled_second",
    "compiled_first_mega",
    "compiled_second_mega",
)
COLD_CASES = tuple(c for c in ORDER if c != "warm" and not c.startswith(("compiled", "warm_")))  # cold boots
LABEL = {
    "warm": "warm restart (page cache as left)",
    "cold": "cold (drop_caches), no warm-up",
    "warmup_full": "cold + full warm-up before vLLM starts",
    "warmup_overlap": "cold + stack before start, weights beside it",
    "stack_beside": "cold + stack beside the start, weights after vLLM's imports (0858b44)",
    "warmup_default": "cold + the default warm-up: the weights after vLLM's imports",
    "weights_overlap": "cold + weights after vLLM's imports, stack = false",
    "warmup_learned": "cold + the learned stack pages before the start, weights after vLLM's imports",
    "unlearned": "cold + the same config, nothing learned yet (= weights after vLLM's imports)",
    "learned_beside": "cold + the learned stack pages beside the start, weights after vLLM's imports",
    "weights_low": "cold + weights after vLLM's imports at I/O class best-effort 7 (io_priority = low)",
    "weights_idle": "cold + weights after vLLM's imports at I/O class idle (io_priority = idle)",
    "warm_debug": "warm restart, VLLM_LOGGING_LEVEL=DEBUG (where the time goes)",
    "warm_importtime": "warm restart, PYTHONPROFILEIMPORTTIME=1 (where the time goes)",
    "compiled_first": "compiled (no --enforce-eager), first start",
    "compiled_second": "compiled, second start (caches kept)",
    "compiled_first_mega": "compiled, first start, VLLM_USE_MEGA_AOT_ARTIFACT=1 (vLLM's one-artifact AOT load)",
    "compiled_second_mega": "compiled, second start, VLLM_USE_MEGA_AOT_ARTIFACT=1",
}
BASELINE_WARM_S = 46.5  # the warm restart on the same machine, before this work


def rounds(fixture: Path) -> list[tuple[str, Optional[int]]]:
    """(results file, round): the fixture's rounds.txt ("FILE ROUND" lines; ROUND ``n``: each row's own ``n``, for
    one file holding interleaved rounds), else the first run's layout."""
    listed = fixture / "rounds.txt"
    if listed.exists():
        pairs = (line.split() for line in listed.read_text().splitlines() if line.strip())
        return [(f, None if n == "n" else int(n)) for f, n in pairs]
    return [("a-results.jsonl", 1), ("b-r1-results.jsonl", 2), ("b-r5-results.jsonl", 3)]


def rows(fixture: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for name, rnd in rounds(fixture):
        for line in (fixture / name).read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                r["round"] = r["n"] if rnd is None else rnd
                out.append(r)
    return out


def _f(v: Optional[float]) -> str:
    return "–" if v is None else f"{v:.1f}"


def table(rs: list[dict[str, Any]]) -> str:
    head = (
        "| case | round | READY s | agent before vLLM start | API import | engine import | weights (vLLM) | "
        "engine init | torch.compile | → health | gate |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for case in ORDER:
        for r in sorted((r for r in rs if r["case"] == case), key=lambda r: r["round"]):
            p, v = r["phases"], r["vllm"]
            lines.append(
                f"| {LABEL[case]} | {r['round']} | {_f(r['ready_s'])} | {_f(p['agent_before_start_s'])} | "
                f"{_f(p['api_import_s'])} | {_f(p['engine_import_s'])} | {_f(v.get('weights_s'))} | "
                f"{_f(v.get('init_engine_s'))} | {_f(v.get('compile_s'))} | {_f(p['to_health_s'])} | "
                f"{_f(p['gate_s'])} |"
            )
    return head + "\n".join(lines) + "\n"


def medians(rs: list[dict[str, Any]]) -> dict[str, float]:
    out = {}
    for case in ORDER:
        vals = [r["ready_s"] for r in rs if r["case"] == case and r.get("ready_s") is not None]
        if vals:
            out[case] = statistics.median(vals)
    return out


def summary(rs: list[dict[str, Any]]) -> str:
    m = medians(rs)
    warm = m["warm"]
    colds = [c for c in COLD_CASES if c in m]
    lines = [
        "median READY s: " + ", ".join(f"{c} {m[c]:.1f}" for c in ORDER if c in m),
        f"warm restart vs the issue's {BASELINE_WARM_S} s: {warm / BASELINE_WARM_S:.2f}x (goal <= 0.65x)",
        "cold-boot READY / warm restart: "
        + ", ".join(f"{c} {m[c] / warm:.2f}x" for c in colds)
        + f" (best {min(m[c] for c in colds) / warm:.2f}x; goal <= 1.15x)",
    ]
    first = next((r for r in rs if r["case"] == "compiled_first"), None)
    second = next((r for r in rs if r["case"] == "compiled_second"), None)
    if first is not None and second is not None:
        a, b = first["vllm"]["compile_s"], second["vllm"]["compile_s"]
        lines.append(f"compiled: second start's torch.compile {b:.1f} s vs first {a:.1f} s = {b / a:.0%} (goal <= 10%)")
    mega = [next((r for r in rs if r["case"] == f"compiled_{w}_mega"), None) for w in ("first", "second")]
    if mega[0] is not None and mega[1] is not None and second is not None:
        a, b = mega[0]["vllm"]["compile_s"], mega[1]["vllm"]["compile_s"]
        lines.append(
            f"compiled, VLLM_USE_MEGA_AOT_ARTIFACT=1: torch.compile {b:.1f} s vs {a:.1f} s = {b / a:.0%}, but engine "
            f"init {mega[1]['vllm']['init_engine_s']:.1f} s and READY {mega[1]['ready_s']:.1f} s against "
            f"{second['vllm']['init_engine_s']:.1f} s and {second['ready_s']:.1f} s without it"
        )
    return "\n".join(lines)


def main() -> int:
    fixture = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "h200-2026-12-02-tts")
    rs = [r for r in rows(fixture) if r["case"] != "warmup"]
    print(table(rs))
    print(summary(rs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
