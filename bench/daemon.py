#!/usr/bin/env python3
"""Footprint of the idle daemon with the stand-in vLLM.

    python bench/daemon.py [--seconds 120] [--drift-interval 10]

Starts `vllm-nodeagent run` (fake --root with one sysctl to watch, a metrics textfile, NOTIFY_SOCKET and a
watchdog like systemd's), with the stand-in vLLM loading in 0 s. Reports:

* start → READY: from spawning the agent to READY=1 on the notify socket, and the part of it that is the
  agent's own (everything except the stand-in's own start-up and load);
* idle RSS of the agent (psutil, after the window) and its CPU over the window as % of one core.

Targets (issue 9): RSS ≤ 45 MB, CPU ≤ 0.1 % at a 10 s drift interval over 2 min, start → READY ≤ 1.5 s
excluding vLLM's own load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--drift-interval", type=int, default=10)
    ap.add_argument("--watchdog-usec", type=int, default=120_000_000)
    a = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="vna-bench-"))
    try:
        root = base / "root"
        node = root / "sys/devices/system/node/node0"
        node.mkdir(parents=True)
        node.joinpath("cpulist").write_text(",".join(map(str, sorted(os.sched_getaffinity(0)))) + "\n")
        (root / "proc/sys/vm").mkdir(parents=True)
        (root / "proc/sys/vm/max_map_count").write_text("65530\n")
        port = _free_port()
        record = base / "record.jsonl"
        cfg = base / "config.toml"
        cfg.write_text(
            f'[agent]\nstate_dir = "/state"\ndrift_interval_s = {a.drift_interval}\n'
            'metrics_textfile = "/m.prom"\n'
            '[sysctl]\n"vm.max_map_count" = 262144\n'
            f"[vllm]\ncommand = {json.dumps([sys.executable, str(REPO / 'tests/standin_vllm.py')])}\n"
            f'model = "m"\nargs = {json.dumps(["--port", str(port), "--record", str(record), "--load-seconds", "0"])}\n'
            f'user = "root"\nnodes = [0]\nhealth_url = "http://127.0.0.1:{port}/health"\n'
        )
        cfg.chmod(0o600)
        sock_path = str(base / "n.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(sock_path)
        env = dict(os.environ, NOTIFY_SOCKET=sock_path, WATCHDOG_USEC=str(a.watchdog_usec), PYTHONPATH=str(REPO))
        t0 = time.monotonic()
        t0_wall = time.time()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vllm_nodeagent.cli",
                "--root",
                str(root),
                "--config",
                str(cfg),
                "--log-format",
                "json",
                "run",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(base / "log", "w"),  # noqa: SIM115
        )
        sock.settimeout(30)
        while True:
            msg = sock.recv(4096).decode()
            if "READY=1" in msg.split("\n"):
                break
        t_ready = time.monotonic() - t0
        server = json.loads(record.read_text().splitlines()[0])
        spawn_s = server["time"] - t0_wall  # agent start-up until the stand-in's Python was running
        log_lines = [json.loads(x) for x in (base / "log").read_text().splitlines() if x.startswith("{")]
        healthy = next(e for e in log_lines if e["event"] == "vllm_healthy")
        agent = psutil.Process(proc.pid)
        time.sleep(2)  # let start-up settle
        c0 = agent.cpu_times()
        w0 = time.monotonic()
        time.sleep(a.seconds)
        c1 = agent.cpu_times()
        window = time.monotonic() - w0
        cpu = (c1.user + c1.system - c0.user - c0.system) / window * 100
        rss = agent.memory_info().rss / 2**20
        uss = agent.memory_full_info().uss / 2**20
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        pings = 0
        sock.settimeout(0.1)
        try:
            while True:
                pings += sock.recv(4096).decode().split("\n").count("WATCHDOG=1")
        except OSError:
            pass
        print(
            json.dumps(
                {
                    "start_to_ready_s": round(t_ready, 3),
                    "agent_until_vllm_spawned_s": round(spawn_s, 3),
                    "vllm_load_s(standin start->healthy, reported by agent)": healthy["load_s"],
                    "idle_window_s": round(window, 1),
                    "drift_interval_s": a.drift_interval,
                    "idle_cpu_pct_of_one_core": round(cpu, 4),
                    "rss_mb": round(rss, 1),
                    "uss_mb": round(uss, 1),
                },
                indent=1,
            )
        )
        ok = rss <= 45 and cpu <= 0.1 and t_ready - healthy["load_s"] <= 1.5
        print("PASS" if ok else "OVER TARGET")
        return 0 if ok else 1
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    sys.exit(main())
