#!/usr/bin/env python3
"""The agent's overhead around a real vLLM start (issue #12).

Interleaved rounds on the same machine, same model, same vLLM arguments, vLLM as ``nobody`` both times:

* alone: ``python -m vllm.entrypoints.openai.api_server ...`` started directly; time to the first successful
  one-token completion (polling /health, then /v1/completions) — what an operator's own script would wait for;
* agent: ``vllm-nodeagent run`` (root, a NOTIFY_SOCKET read here, numactl binding, argument probe as the vLLM
  user, readiness gate); time to READY=1, twice per round with the same state dir and arguments: a first start
  (the probe imports vLLM) and a start with the probe's answer cached (what every restart and later start
  pays). Then the agent's RSS and CPU over a 10 s window while vLLM serves (8 completions in that window), and
  the time from SIGTERM to the agent's exit with every vLLM process gone.

Usage (root): VLLM_VENV=/work/vllm-venv2 python bench/vllm_e2e.py MODEL_DIR [--rounds 2]
Build a model with: $VLLM_VENV/bin/python tests/vllm_real/tiny_llama.py DIR (then chmod a+r DIR/*).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
LIMIT_S = 900.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def vllm_args(port: int) -> list[str]:
    return ["--port", str(port), "--max-model-len", "256", "--dtype", "bfloat16", "--gpu-memory-utilization",
            "0.3", "--served-model-name", "tiny"]


def one_token(port: int) -> bool:
    body = json.dumps({"model": "tiny", "prompt": "Hello", "max_tokens": 1, "temperature": 0}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310 - loopback
            return bool(json.loads(resp.read()).get("choices"))
    except (urllib.error.URLError, OSError, ValueError):
        return False


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as resp:
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def stop_tree(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def run_alone(venv: str, model: str) -> float:
    import pwd

    pw = pwd.getpwnam("nobody")
    cache = tempfile.mkdtemp(prefix="vna-bench-cache-")  # cold caches, like the agent's fresh cache_dir
    os.chown(cache, pw.pw_uid, pw.pw_gid)
    port = free_port()
    env = {"PATH": f"{venv}/bin:/usr/bin:/bin", "HOME": cache, "LANG": "C.UTF-8",
           "TORCHINDUCTOR_CACHE_DIR": f"{cache}/torchinductor", "VLLM_CACHE_ROOT": f"{cache}/vllm"}
    t0 = time.monotonic()
    proc = subprocess.Popen([f"{venv}/bin/python", "-m", "vllm.entrypoints.openai.api_server", "--model", model,
                             *vllm_args(port)], env=env, user=pw.pw_uid, group=pw.pw_gid, extra_groups=[],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, cwd="/")
    try:
        while time.monotonic() - t0 < LIMIT_S:
            if proc.poll() is not None:
                raise RuntimeError(f"vLLM alone exited {proc.returncode}")
            if healthy(port) and one_token(port):
                return time.monotonic() - t0
            time.sleep(0.5)
        raise RuntimeError("vLLM alone: no completion in time")
    finally:
        stop_tree(proc)


def run_agent(venv: str, model: str, base: Path, port: int) -> dict[str, float]:
    cfg = base / "config.toml"
    cfg.write_text("\n".join([
        "[agent]", f'state_dir = "{base}/state"', f'cache_dir = "{base}/cache"',
        "[vllm]", f"command = {json.dumps([f'{venv}/bin/python', '-m', 'vllm.entrypoints.openai.api_server'])}",
        f"model = {json.dumps(model)}", f"args = {json.dumps(vllm_args(port))}", 'user = "nobody"', "nodes = [0]",
        f'health_url = "http://127.0.0.1:{port}/health"', f"start_timeout_s = {int(LIMIT_S)}", "stop_timeout_s = 30",
    ]) + "\n")
    cfg.chmod(0o600)
    sock_path = str(base / f"notify-{time.monotonic_ns()}.sock")  # a second start in the same base: a new socket
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(0.5)
    env = dict(os.environ, NOTIFY_SOCKET=sock_path, PYTHONPATH=str(REPO))
    t0 = time.monotonic()
    agent = subprocess.Popen([sys.executable, "-m", "vllm_nodeagent.cli", "--config", str(cfg), "run"], env=env,
                             stdout=subprocess.DEVNULL, stderr=open(base / "agent.log", "ab"))  # noqa: SIM115
    out: dict[str, float] = {}
    try:
        while "ready_s" not in out:
            if time.monotonic() - t0 > LIMIT_S or agent.poll() is not None:
                raise RuntimeError(f"agent: no READY (see {base}/agent.log)")
            try:
                if "READY=1" in sock.recv(4096).decode().split("\n"):
                    out["ready_s"] = time.monotonic() - t0
            except socket.timeout:
                continue
        me = psutil.Process(agent.pid)
        cpu0, w0 = sum(me.cpu_times()[:2]), time.monotonic()
        for _ in range(8):
            one_token(port)
            time.sleep(1.0)
        time.sleep(max(0.0, 10.0 - (time.monotonic() - w0)))
        out["agent_cpu_pct"] = 100.0 * (sum(me.cpu_times()[:2]) - cpu0) / (time.monotonic() - w0)
        out["agent_rss_mib"] = me.memory_info().rss / 2**20
        tree = [p.pid for p in me.children(recursive=True)]
        t1 = time.monotonic()
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=120)
        out["stop_s"] = time.monotonic() - t1
        out["left_behind"] = float(sum(1 for p in tree if psutil.pid_exists(p)
                                       and psutil.Process(p).status() != psutil.STATUS_ZOMBIE))
    finally:
        if agent.poll() is None:
            agent.kill()
        sock.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    venv = os.environ.get("VLLM_VENV", "")
    if os.geteuid() != 0 or not venv:
        print("run as root with VLLM_VENV set", file=sys.stderr)
        return 2
    alone: list[float] = []
    agent: list[dict[str, float]] = []
    cached: list[dict[str, float]] = []
    for i in range(args.rounds):
        # interleaved, alternating who goes first, so a drifting machine load hits both alike
        order = ("alone", "agent") if i % 2 == 0 else ("agent", "alone")
        for who in order:
            if who == "alone":
                alone.append(run_alone(venv, args.model))
                print(f"round {i + 1}: vLLM alone -> first completion {alone[-1]:.1f} s", flush=True)
            else:
                base = Path(tempfile.mkdtemp(prefix="vna-bench-"))
                base.chmod(0o755)
                port = free_port()
                agent.append(run_agent(venv, args.model, base, port))
                print(f"round {i + 1}: agent -> READY {agent[-1]['ready_s']:.1f} s  {agent[-1]}", flush=True)
                cached.append(run_agent(venv, args.model, base, port))
                print(f"round {i + 1}: agent, probe cached -> READY {cached[-1]['ready_s']:.1f} s  {cached[-1]}",
                      flush=True)
    a, b = statistics.median(alone), statistics.median(r["ready_s"] for r in agent)
    c = statistics.median(r["ready_s"] for r in cached)
    summary: dict[str, Any] = {
        "rounds": args.rounds, "alone_s": [round(x, 1) for x in alone],
        "agent_ready_s": [round(r["ready_s"], 1) for r in agent], "ratio_median": round(b / a, 3),
        "agent_cached_ready_s": [round(r["ready_s"], 1) for r in cached], "ratio_cached_median": round(c / a, 3),
        "agent_rss_mib": round(max(r["agent_rss_mib"] for r in agent), 1),
        "agent_cpu_pct_serving": round(max(r["agent_cpu_pct"] for r in agent), 2),
        "stop_s": [round(r["stop_s"], 1) for r in agent + cached],
        "left_behind": sum(r["left_behind"] for r in agent + cached),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
