#!/usr/bin/env python3
"""The part-2 table of issue 17 from time_to_serve.py's results (one JSON object per case and round).

    python3 tests/gpu/tts_report.py tests/gpu/h100-2026-11-25-vllm/results.jsonl

A row carrying ``"invalid": "why"`` (kept as recorded, found wrong afterwards) gets a line of its own, marked so,
and counts in no median or ratio. The ``warmup`` case (vLLM's first start on a fresh machine) is in no row.
"""

from __future__ import annotations

import json
import statistics
import sys
from typing import Any, Optional

CASES = ("cold", "prewarmed", "in_start", "vllm_prefetch", "compiled")
LABEL = {
    "cold": "(a) cold page cache, no prewarm: `launch`",
    "prewarmed": "(b) `prewarm`, then `launch`",
    "in_start": "(c) prewarm as part of start: `serve` (as the vLLM user)",
    "vllm_prefetch": "vLLM's own `--safetensors-load-strategy prefetch`, cold: `launch`",
    "compiled": "cold, no `--enforce-eager` (torch.compile + CUDA graphs): `run --layout single`",
}


def load(paths: list[str]) -> list[dict[str, Any]]:
    rows = []
    for p in paths:
        with open(p, encoding="utf-8") as fh:
            rows += [json.loads(line) for line in fh if line.strip()]
    return rows


def _notify_at(r: dict[str, Any], prefix: str) -> Optional[float]:
    """Seconds after the agent's start of the first sd_notify message starting with ``prefix``."""
    return next((float(t) for t, m in r.get("notify", []) if m.startswith(prefix)), None)


def prewarm_s(r: dict[str, Any]) -> Optional[float]:
    """The prewarm's own time: the CLI's wall time (b), or, in the daemon, STATUS=prewarming until the next phase."""
    if r.get("prewarm_wall_s") is not None:
        return float(r["prewarm_wall_s"])
    start, end = _notify_at(r, "STATUS=prewarming"), _notify_at(r, "STATUS=checking vLLM arguments")
    return round(end - start, 2) if start is not None and end is not None else None


def vllm_started_s(r: dict[str, Any]) -> Optional[float]:
    """When vLLM's process started (STATUS=vLLM loading): before it, the agent's plan and argument probe."""
    return _notify_at(r, "STATUS=vLLM loading")


def _fmt(values: list[float]) -> str:
    if not values:
        return "-"
    med = statistics.median(values)
    return f"{med:.1f}" if len(values) == 1 else f"{med:.1f} ({', '.join(f'{v:.1f}' for v in values)})"


def _row(label: str, rs: list[dict[str, Any]]) -> str:
    pw = [v for v in (prewarm_s(r) for r in rs) if v is not None]
    return (
        "| "
        + " | ".join(
            [
                label,
                str(len(rs)),
                _fmt(pw),
                _fmt([v for v in (vllm_started_s(r) for r in rs) if v is not None]),
                _fmt([r["vllm"]["weights_s"] for r in rs if "weights_s" in r["vllm"]]),
                _fmt([r["vllm"]["model_load_s"] for r in rs if "model_load_s" in r["vllm"]]),
                _fmt([r["ready_s"] for r in rs]),
                _fmt([r["first_completion_s"] for r in rs if r.get("first_completion_s")]),
                "/".join(f"{100 * r['resident_at_start']:.0f}%" for r in rs),
            ]
        )
        + " |"
    )


def table(all_rows: list[dict[str, Any]]) -> str:
    rows = [r for r in all_rows if not r.get("invalid")]
    cols = [
        "case",
        "n",
        "prewarm s",
        "vLLM started s",
        "vLLM weights s",
        "vLLM model load s",
        "READY s",
        "1st completion s",
        "resident at start",
    ]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    ready: dict[str, list[float]] = {}
    for case in CASES:
        rs = [r for r in rows if r["case"] == case and r.get("ready_s") is not None]
        if rs:
            ready[case] = [r["ready_s"] for r in rs]
            out.append(_row(LABEL[case], rs))
        bad = [r for r in all_rows if r["case"] == case and r.get("invalid") and r.get("ready_s") is not None]
        if bad:
            out.append(_row(f"{LABEL[case]} — **invalid**: {bad[0]['invalid']}", bad))
    lines = ["\n".join(out), ""]
    for other in ("prewarmed", "in_start"):
        if "cold" not in ready or other not in ready:
            continue
        c, p = statistics.median(ready["cold"]), statistics.median(ready[other])
        lines.append(f"time to READY, cold / {other} (median): {c:.1f} / {p:.1f} s = {c / p:.2f}x")
        wc = [r["vllm"]["weights_s"] for r in rows if r["case"] == "cold" and "weights_s" in r["vllm"]]
        wp = [r["vllm"]["weights_s"] for r in rows if r["case"] == other and "weights_s" in r["vllm"]]
        if wc and wp:
            lines.append(
                f"vLLM weight load, cold / {other} (median): {statistics.median(wc):.1f} / "
                f"{statistics.median(wp):.1f} s = {statistics.median(wc) / statistics.median(wp):.2f}x"
            )
    failed = [f"{r['case']} #{r['n']}: {r.get('failed')}" for r in all_rows if r.get("ready_s") is None]
    lines += [f"not READY: {f}" for f in failed]
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(load(sys.argv[1:])))
