#!/usr/bin/env python3
"""The weights' read beside vLLM's start at each ``[prewarm] io_priority``: how much it slows vLLM's own cold reads.

    sudo VLLM_VENV=/work/vllm-venv .venv/bin/python bench/io_priority.py [--rounds 3] [--big-gib 4] [--json]
    ... bench/io_priority.py --then-read --bg-delay 8     # vLLM's own weight load meets the read beside it

Each run starts cold: sync + ``3 > /proc/sys/vm/drop_caches``. Then, at the same moment, a cold
``import vllm.entrypoints.openai.api_server`` of the real vLLM venv as ``nobody`` (the foreground: many small
reads, what vLLM does while the weights stream) and the agent's own reader (``prewarm``, the reader picked for the
storage) over one big file (the weights) at the class under test: ``none`` (no read beside: the reference),
``default`` (the daemon's own class), ``low`` (best-effort 7) and ``idle``. Modes run interleaved and rotated
round by round; each round's import time is divided by that round's ``none``, so the disk's drift cancels; the
table shows medians, and the big file's read time against ``default`` (what the lower class costs the weights).

``--then-read``: the foreground process then reads the big file itself (what vLLM's weight loader does), and the
read beside starts ``--bg-delay`` seconds after the import: vLLM's reads meet the agent's on the same pages, where a
low class could hold vLLM back (a page the idle reader has in flight is waited for at the idle request's turn).
The foreground's total (import + its own read) is what is compared then.

Classes matter only under a scheduler that orders by them (mq-deadline, bfq): the disk's scheduler is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from prewarm import make_safetensors  # bench/prewarm.py: a file of random bytes, written once

from vllm_nodeagent.host import Host
from vllm_nodeagent.prewarm.warm import prewarm
from vllm_nodeagent.storage import storage_of

MODES = ("none", "default", "low", "idle")
IMPORT = "import vllm.entrypoints.openai.api_server"
# the foreground with --then-read: the import, then the weights read as vLLM's loader would (sequential, 16 MiB)
THEN_READ = """
import json, sys, time
t = time.monotonic()
import vllm.entrypoints.openai.api_server
a = time.monotonic()
with open(sys.argv[1], "rb", buffering=0) as f:
    while f.read(16 << 20):
        pass
print(json.dumps({"import_s": a - t, "weights_s": time.monotonic() - a}))
"""


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def one_run(mode: str, venv: str, big: str, then_read: bool = False, bg_delay: float = 0.0) -> dict[str, Any]:
    drop_caches()
    bg: dict[str, Any] = {}

    def read_big() -> None:
        time.sleep(bg_delay)
        r = prewarm([big], host=Host("/"), budget_bytes=None, io_priority="" if mode == "default" else mode)
        bg.update(seconds=r.seconds, gbps=r.gbps, read=r.read_bytes, reader=r.reader, errors=r.errors)

    thread = threading.Thread(target=read_big) if mode != "none" else None
    argv = (
        [os.path.join(venv, "bin", "python"), "-c", THEN_READ, big]
        if then_read
        else [venv + "/bin/python", "-c", IMPORT]
    )
    t0 = time.monotonic()
    if thread is not None:
        thread.start()
    proc = subprocess.run(
        argv, user="nobody", cwd="/", env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"},
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    import_s = time.monotonic() - t0
    if thread is not None:
        thread.join()
    if proc.returncode != 0:
        raise SystemExit(f"the import failed as nobody (exit {proc.returncode}): {proc.stderr.strip()[-400:]}")
    out: dict[str, Any] = {"mode": mode, "import_s": round(import_s, 3)}
    if then_read:
        child = json.loads(proc.stdout.strip().splitlines()[-1])
        out.update(vllm_import_s=round(child["import_s"], 3), vllm_weights_s=round(child["weights_s"], 3))
    return {**out, **{f"bg_{k}": v for k, v in bg.items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--venv", default=os.environ.get("VLLM_VENV", ""), help="the real vLLM venv ($VLLM_VENV)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--big-gib", type=float, default=4.0, help="the file read beside the import (GiB)")
    ap.add_argument("--dir", default="/var/tmp/vna-bench-ioprio")
    ap.add_argument("--then-read", action="store_true", help="the foreground then reads the big file itself")
    ap.add_argument("--bg-delay", type=float, default=0.0, help="seconds before the read beside starts")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/io_priority.py: needs root (drop_caches, the import as nobody)", file=sys.stderr)
        return 2
    if not a.venv or not os.path.isfile(os.path.join(a.venv, "bin", "python")):
        print("bench/io_priority.py: --venv (or $VLLM_VENV): a venv with vLLM installed", file=sys.stderr)
        return 2
    big = os.path.join(a.dir, "weights.bin")
    os.makedirs(a.dir, exist_ok=True)
    make_safetensors(big, int(a.big_gib * (1 << 30)))
    storage = storage_of(Host("/"), os.stat(big).st_dev)
    sched = "?"
    if storage.name and os.path.exists(f"/sys/block/{storage.name}/queue/scheduler"):
        with open(f"/sys/block/{storage.name}/queue/scheduler") as f:
            sched = f.read().strip()
    runs = []
    for rnd in range(a.rounds):
        order = MODES[rnd % len(MODES) :] + MODES[: rnd % len(MODES)]
        for mode in order:
            r = one_run(mode, a.venv, big, a.then_read, a.bg_delay)
            r["round"] = rnd + 1
            runs.append(r)
            print(json.dumps(r), file=sys.stderr)
    table = summarize(runs)
    if a.json:
        print(json.dumps({"storage": storage.describe(), "scheduler": sched, "runs": runs, "summary": table}))
        return 0
    what = f"then read by the foreground, the read beside {a.bg_delay:g} s late" if a.then_read else "beside"
    print(f"storage: {storage.describe()}; scheduler: {sched}; {a.big_gib:g} GiB {what}; {a.rounds} rounds")
    first = "import + own read" if a.then_read else "cold import"
    print(f"| io_priority | {first} s (median) | / none (median) | weights' read beside s | read / default |")
    print("|---|---|---|---|---|")
    for mode in MODES:
        t = table[mode]
        read = "–" if t["bg_s"] is None else f"{t['bg_s']:.1f}"
        rel = "–" if t["bg_vs_default"] is None else f"{t['bg_vs_default']:.2f}"
        print(f"| {mode} | {t['import_s']:.1f} | {t['vs_none']:.2f} | {read} | {rel} |")
    return 0


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    by_round: dict[int, dict[str, dict[str, Any]]] = {}
    for r in runs:
        by_round.setdefault(r["round"], {})[r["mode"]] = r
    out: dict[str, dict[str, Any]] = {}
    for mode in MODES:
        rows = [rr[mode] for rr in by_round.values()]
        vs_none = [rr[mode]["import_s"] / rr["none"]["import_s"] for rr in by_round.values()]
        bg = [r["bg_seconds"] for r in rows if "bg_seconds" in r]
        vs_def = [
            rr[mode]["bg_seconds"] / rr["default"]["bg_seconds"] for rr in by_round.values() if "bg_seconds" in rr[mode]
        ]
        out[mode] = {
            "import_s": statistics.median(r["import_s"] for r in rows),
            "vs_none": statistics.median(vs_none),
            "bg_s": statistics.median(bg) if bg else None,
            "bg_vs_default": statistics.median(vs_def) if vs_def else None,
        }
    return out


if __name__ == "__main__":
    sys.exit(main())
