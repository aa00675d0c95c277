#!/usr/bin/env python3
"""Benchmark: `vllm-nodeagent doctor --json` on the 2-socket / 8-GPU fixture host (NVML replayed).

Prints median wall times for: doctor in-process (the audit itself), doctor as a new process (what an operator
and Ansible see: interpreter start + imports + audit), a bare interpreter start, and reference tools in the same
run: `tuned-adm verify` where tuned can answer (it needs its daemon over D-Bus) and `tuned-adm list` otherwise.

The goal is a ratio, not a time (this shared machine's speed drifts 2x within minutes): doctor as a new process
<= 8x a bare interpreter start. New-process doctor and the bare start run alternately, and the ratio printed is
the median of the per-pair ratios, so drift cancels. Child processes get a bytecode cache (PYTHONPYCACHEPREFIX in
a temporary directory) as an installed package has (pip byte-compiles at install), even where the environment
sets PYTHONDONTWRITEBYTECODE; --no-bytecode measures without it.
Usage: python bench/doctor.py [--runs N] [--no-bytecode]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from fakehost import two_socket_8gpu  # noqa: E402
from nvml_double import NvmlDouble, hgx_8gpu_recording  # noqa: E402

from vllm_nodeagent import cli  # noqa: E402
from vllm_nodeagent.nvml import Nvml  # noqa: E402

CHILD = (
    "import sys; sys.path[:0] = {paths!r}\n"
    "from nvml_double import NvmlDouble, hgx_8gpu_recording\n"
    "from vllm_nodeagent import cli\nfrom vllm_nodeagent.nvml import Nvml\n"
    "sys.exit(cli.main(sys.argv[1:], nvml_opener=lambda: Nvml.open(lambda: NvmlDouble(hgx_8gpu_recording()))))\n"
)


def median_time(fn: Callable[[], object], runs: int) -> float:
    fn()  # warm the page cache and import caches once
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def paired(a: Callable[[], object], b: Callable[[], object], runs: int) -> tuple[float, float, list[float]]:
    """Median times of ``a`` and ``b`` run alternately, and each pair's a/b ratio."""
    a()
    b()
    ta, tb, ratios = [], [], []
    for _ in range(runs):
        t = time.perf_counter()
        a()
        t1 = time.perf_counter()
        b()
        t2 = time.perf_counter()
        ta.append(t1 - t)
        tb.append(t2 - t1)
        ratios.append((t1 - t) / (t2 - t1))
    return statistics.median(ta), statistics.median(tb), ratios


GOAL_RATIO = 8.0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--no-bytecode", action="store_true", help="children compile every module from source")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        two_socket_8gpu(root)
        cfg = Path(tmp) / "config.toml"
        cfg.write_text((REPO / "etc/config.toml").read_text().replace("affinity = false", "affinity = true"))
        cfg.chmod(0o600)
        argv = ["--root", str(root), "--config", str(cfg), "--log-format", "json", "doctor", "--json"]
        env = dict(os.environ)
        if args.no_bytecode:
            env["PYTHONDONTWRITEBYTECODE"] = "1"
        else:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "pycache")

        def in_process() -> None:
            with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
                cli.main(argv, nvml_opener=lambda: Nvml.open(lambda: NvmlDouble(hgx_8gpu_recording())))

        def new_process() -> None:
            code = CHILD.format(paths=[str(REPO), str(REPO / "tests")])
            subprocess.run(
                [sys.executable, "-c", code, *argv],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
                env=env,
            )

        def bare() -> None:
            subprocess.run([sys.executable, "-c", "pass"], check=False, env=env)

        new, start, ratios = paired(new_process, bare, args.runs)
        rows = [
            ("doctor, in-process (the audit)", median_time(in_process, args.runs)),
            ("doctor --json, new process", new),
            ("python3 -c pass (interpreter start)", start),
        ]
        tuned = shutil.which("tuned-adm")
        note = "tuned not installed (apt-get install tuned to compare)"
        if tuned:
            probe = subprocess.run([tuned, "verify"], capture_output=True, text=True, check=False)
            if probe.returncode == 0:
                rows.append(
                    (
                        "tuned-adm verify",
                        median_time(
                            lambda: subprocess.run([tuned, "verify"], capture_output=True, check=False), args.runs
                        ),
                    )
                )
                note = ""
            else:
                note = f"tuned-adm verify unavailable here: {(probe.stdout + probe.stderr).strip().splitlines()[0]}"
                rows.append(
                    (
                        "tuned-adm list (reference CLI, no daemon)",
                        median_time(
                            lambda: subprocess.run([tuned, "list"], capture_output=True, check=False), args.runs
                        ),
                    )
                )
    mode = "no bytecode cache" if args.no_bytecode else "bytecode cached, as installed"
    print(f"2-socket / 8-GPU fixture, full sample config + IRQ affinity, median of {args.runs} runs ({mode})\n")
    print("| what | median s | doctor (new process) / this |\n|---|---|---|")
    for name, secs in rows:
        print(f"| {name} | {secs:.3f} | {new / secs:.2f}x |")
    if note:
        print(f"\nnote: {note}")
    ratio = statistics.median(ratios)
    print(
        f"\ndoctor (new process) / bare interpreter start, median of {args.runs} alternating pairs: {ratio:.2f}x "
        f"(pairs {min(ratios):.2f}-{max(ratios):.2f}x); goal <= {GOAL_RATIO:.0f}x -> "
        f"{'met' if ratio <= GOAL_RATIO else 'NOT met'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
