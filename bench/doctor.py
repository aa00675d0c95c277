#!/usr/bin/env python3
"""Benchmark: `vllm-nodeagent doctor --json` on the 2-socket / 8-GPU fixture host (NVML replayed).

Prints median wall times for: doctor in-process (the audit itself), doctor as a new process (what an operator
and Ansible see: interpreter start + imports + audit), a bare interpreter start, and reference tools in the same
run: `tuned-adm verify` where tuned can answer (it needs its daemon over D-Bus) and `tuned-adm list` otherwise.
Usage: python bench/doctor.py [--runs N]
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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        two_socket_8gpu(root)
        cfg = Path(tmp) / "config.toml"
        cfg.write_text((REPO / "etc/config.toml").read_text().replace("affinity = false", "affinity = true"))
        cfg.chmod(0o600)
        argv = ["--root", str(root), "--config", str(cfg), "--log-format", "json", "doctor", "--json"]

        def in_process() -> None:
            with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
                cli.main(argv, nvml_opener=lambda: Nvml.open(lambda: NvmlDouble(hgx_8gpu_recording())))

        def new_process() -> None:
            code = CHILD.format(paths=[str(REPO), str(REPO / "tests")])
            subprocess.run([sys.executable, "-c", code, *argv], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, check=False)

        def bare() -> None:
            subprocess.run([sys.executable, "-c", "pass"], check=False)

        rows = [("doctor, in-process (the audit)", median_time(in_process, args.runs)),
                ("doctor --json, new process", median_time(new_process, args.runs)),
                ("python3 -c pass (interpreter start)", median_time(bare, args.runs))]
        tuned = shutil.which("tuned-adm")
        note = "tuned not installed (apt-get install tuned to compare)"
        if tuned:
            probe = subprocess.run([tuned, "verify"], capture_output=True, text=True, check=False)
            if probe.returncode == 0:
                rows.append(("tuned-adm verify", median_time(
                    lambda: subprocess.run([tuned, "verify"], capture_output=True, check=False), args.runs)))
                note = ""
            else:
                note = f"tuned-adm verify unavailable here: {(probe.stdout + probe.stderr).strip().splitlines()[0]}"
                rows.append(("tuned-adm list (reference CLI, no daemon)", median_time(
                    lambda: subprocess.run([tuned, "list"], capture_output=True, check=False), args.runs)))
    new = rows[1][1]
    print(f"2-socket / 8-GPU fixture, full sample config + IRQ affinity, median of {args.runs} runs\n")
    print("| what | median s | doctor (new process) / this |\n|---|---|---|")
    for name, secs in rows:
        print(f"| {name} | {secs:.3f} | {new / secs:.2f}x |")
    if note:
        print(f"\nnote: {note}")
    print(f"\ntarget: doctor <= 0.3 s -> {'met' if new <= 0.3 else 'NOT met'} ({new:.3f} s as a new process)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
