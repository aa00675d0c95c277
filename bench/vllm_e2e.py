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

Every start compiles from empty caches: vLLM alone gets a fresh directory for the variables the agent sets
(``serving.env.child_env``: HOME, XDG_CACHE_HOME, TORCHINDUCTOR_CACHE_DIR, TRITON_CACHE_DIR, VLLM_CACHE_ROOT, built
by that same function), and the agent's ``[agent] cache_dir`` is emptied before each of its starts, while its
state dir (the probe cache) is kept for the cached start. The 1-minute load average is sampled during each start.

Usage (root): VLLM_VENV=/work/vllm-venv2 python bench/vllm_e2e.py MODEL_DIR [--rounds 3]
Build a model with: $VLLM_VENV/bin/python tests/vllm_real/tiny_llama.py DIR (then chmod a+r DIR/* and 755 DIR).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from vllm_nodeagent.config import VllmConfig  # noqa: E402
from vllm_nodeagent.serving.env import child_env, resolve_user  # noqa: E402

LIMIT_S = 900.0
MODULE = ["-m", "vllm.entrypoints.openai.api_server"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def vllm_args(port: int) -> list[str]:
    return [
        "--port",
        str(port),
        "--max-model-len",
        "256",
        "--dtype",
        "bfloat16",
        "--gpu-memory-utilization",
        "0.3",
        "--served-model-name",
        "tiny",
    ]


def one_token(port: int) -> bool:
    body = json.dumps({"model": "tiny", "prompt": "Hello", "max_tokens": 1, "temperature": 0}).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/completions", data=body, headers={"Content-Type": "application/json"}
    )
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


class LoadSampler:
    """The 1-minute load average every 5 s while a start runs (the machine is shared; say how loaded it was)."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(os.getloadavg()[0])
            self._stop.wait(5.0)

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, float]:
        s = self.samples or [0.0]
        return {"load_min": min(s), "load_max": max(s), "load_mean": round(statistics.mean(s), 2)}


def stop_tree(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def run_alone(venv: str, model: str) -> dict[str, float]:
    who = resolve_user("nobody")
    cache = tempfile.mkdtemp(prefix="vna-bench-cache-")  # empty caches, like the agent's emptied cache_dir
    os.chown(cache, who.uid, who.gid)
    port = free_port()
    command = [f"{venv}/bin/python", *MODULE]
    # the environment the agent gives vLLM, built by the agent's own function (same cache variables)
    env = child_env(VllmConfig(command=command), who, [], None, cache)
    out: dict[str, float] = {}
    with LoadSampler() as load:
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [*command, "--model", model, *vllm_args(port)],
            env=env,
            user=who.uid,
            group=who.gid,
            extra_groups=[],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            cwd="/",
        )
        try:
            while time.monotonic() - t0 < LIMIT_S:
                if proc.poll() is not None:
                    raise RuntimeError(f"vLLM alone exited {proc.returncode}")
                if healthy(port):
                    out.setdefault("health_s", time.monotonic() - t0)
                    if one_token(port):
                        out["ready_s"] = time.monotonic() - t0
                        break
                time.sleep(0.5)
            else:
                raise RuntimeError("vLLM alone: no completion in time")
        finally:
            stop_tree(proc)
            shutil.rmtree(cache, ignore_errors=True)
    out.update(load.summary())
    return out


def _events(log_path: Path) -> dict[str, float]:
    """Epoch seconds of the agent's first log event of each kind (its JSON lines; vLLM's own lines skipped)."""
    seen: dict[str, float] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            ev = json.loads(line)
            seen.setdefault(
                str(ev["event"]), datetime.fromisoformat(ev["timestamp"].replace("Z", "+00:00")).timestamp()
            )
        except (ValueError, KeyError, TypeError):
            continue
    return seen


def run_agent(venv: str, model: str, base: Path, port: int, tag: str) -> dict[str, float]:
    cache = base / "cache"
    shutil.rmtree(cache, ignore_errors=True)  # empty compile caches; the state dir (probe cache) stays
    cfg = base / "config.toml"
    cfg.write_text(
        "\n".join(
            [
                "[agent]",
                f'state_dir = "{base}/state"',
                f'cache_dir = "{cache}"',
                "[vllm]",
                f"command = {json.dumps([f'{venv}/bin/python', *MODULE])}",
                f"model = {json.dumps(model)}",
                f"args = {json.dumps(vllm_args(port))}",
                'user = "nobody"',
                "nodes = [0]",
                f'health_url = "http://127.0.0.1:{port}/health"',
                f"start_timeout_s = {int(LIMIT_S)}",
                "stop_timeout_s = 30",
            ]
        )
        + "\n"
    )
    cfg.chmod(0o600)
    sock_path = str(base / f"notify-{tag}.sock")  # a second start in the same base: a new socket
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(0.5)
    env = dict(os.environ, NOTIFY_SOCKET=sock_path, PYTHONPATH=str(REPO))
    log_path = base / f"agent-{tag}.log"
    out: dict[str, float] = {}
    with LoadSampler() as load, open(log_path, "ab") as log_fh:
        wall0, t0 = time.time(), time.monotonic()
        agent = subprocess.Popen(
            [sys.executable, "-m", "vllm_nodeagent.cli", "--config", str(cfg), "run"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log_fh,
        )
        try:
            while "ready_s" not in out:
                if time.monotonic() - t0 > LIMIT_S or agent.poll() is not None:
                    raise RuntimeError(f"agent: no READY (see {log_path})")
                try:
                    if "READY=1" in sock.recv(4096).decode().split("\n"):
                        out["ready_s"] = time.monotonic() - t0
                except socket.timeout:
                    continue
            load_during_start = load.summary()
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
            out["left_behind"] = float(
                sum(1 for p in tree if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE)
            )
        finally:
            if agent.poll() is None:
                agent.kill()
            sock.close()
    out.update(load_during_start)
    ev = _events(log_path)
    out["probe_ran"] = float("vllm_probe_ran" in ev)
    if "vllm_probe_ran" in ev and "vllm_probe_cache_miss" in ev:
        out["probe_s"] = ev["vllm_probe_ran"] - ev["vllm_probe_cache_miss"]
    if "daemon_started" in ev:  # vLLM was spawned just before this event
        out["spawn_s"] = ev["daemon_started"] - wall0
        if "vllm_health_ok" in ev:
            out["vllm_load_s"] = ev["vllm_health_ok"] - ev["daemon_started"]
    if "vllm_health_ok" in ev and "ready" in ev:
        out["gate_s"] = ev["ready"] - ev["vllm_health_ok"]
    shutil.rmtree(cache, ignore_errors=True)
    return out


def warm_up(venv: str) -> None:
    """One untimed vLLM import as nobody, so round 1's first start does not also pay reading the venv from disk."""
    who = resolve_user("nobody")
    scratch = tempfile.mkdtemp(prefix="vna-bench-warm-")
    os.chown(scratch, who.uid, who.gid)
    env = child_env(VllmConfig(command=[f"{venv}/bin/python"]), who, [], None, scratch)
    subprocess.run(
        [f"{venv}/bin/python", "-c", "import vllm.entrypoints.openai.api_server"],
        env=env,
        user=who.uid,
        group=who.gid,
        extra_groups=[],
        cwd="/",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=LIMIT_S,
    )
    shutil.rmtree(scratch, ignore_errors=True)


def _fmt(d: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in d.items())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    venv = os.environ.get("VLLM_VENV", "")
    if os.geteuid() != 0 or not venv:
        print("run as root with VLLM_VENV set", file=sys.stderr)
        return 2
    print(f"uptime at start: {os.getloadavg()}", flush=True)
    warm_up(venv)
    alone: list[dict[str, float]] = []
    agent: list[dict[str, float]] = []
    cached: list[dict[str, float]] = []
    for i in range(args.rounds):
        # interleaved, alternating who goes first, so a drifting machine load hits both alike; the cached start
        # follows the agent's first start (it needs that start's probe cache)
        order = ("alone", "agent") if i % 2 == 0 else ("agent", "alone")
        for who in order:
            if who == "alone":
                alone.append(run_alone(venv, args.model))
                print(
                    f"round {i + 1}: vLLM alone -> first completion {alone[-1]['ready_s']:.1f} s  {_fmt(alone[-1])}",
                    flush=True,
                )
            else:
                base = Path(tempfile.mkdtemp(prefix="vna-bench-"))
                base.chmod(0o755)
                port = free_port()
                agent.append(run_agent(venv, args.model, base, port, "first"))
                print(f"round {i + 1}: agent -> READY {agent[-1]['ready_s']:.1f} s  {_fmt(agent[-1])}", flush=True)
                cached.append(run_agent(venv, args.model, base, port, "cached"))
                print(
                    f"round {i + 1}: agent, probe cached -> READY {cached[-1]['ready_s']:.1f} s  {_fmt(cached[-1])}",
                    flush=True,
                )
        print(
            f"round {i + 1}: ratios agent/alone {agent[-1]['ready_s'] / alone[-1]['ready_s']:.3f}, "
            f"cached/alone {cached[-1]['ready_s'] / alone[-1]['ready_s']:.3f}",
            flush=True,
        )
    a = statistics.median(r["ready_s"] for r in alone)
    b = statistics.median(r["ready_s"] for r in agent)
    c = statistics.median(r["ready_s"] for r in cached)
    summary: dict[str, Any] = {
        "rounds": args.rounds,
        "alone_s": [round(r["ready_s"], 1) for r in alone],
        "agent_ready_s": [round(r["ready_s"], 1) for r in agent],
        "agent_cached_ready_s": [round(r["ready_s"], 1) for r in cached],
        "median_s": {"alone": round(a, 1), "agent": round(b, 1), "cached": round(c, 1)},
        "ratio_of_medians": {"agent": round(b / a, 3), "cached": round(c / a, 3)},
        "ratio_per_round": {
            "agent": [round(x["ready_s"] / y["ready_s"], 3) for x, y in zip(agent, alone)],
            "cached": [round(x["ready_s"] / y["ready_s"], 3) for x, y in zip(cached, alone)],
        },
        "probe_s": [round(r.get("probe_s", 0.0), 1) for r in agent],
        "probe_ran_in_cached_start": sum(r["probe_ran"] for r in cached),
        "agent_rss_mib": round(max(r["agent_rss_mib"] for r in agent + cached), 1),
        "agent_cpu_pct_serving": round(max(r["agent_cpu_pct"] for r in agent + cached), 2),
        "stop_s": [round(r["stop_s"], 1) for r in agent + cached],
        "left_behind": sum(r["left_behind"] for r in agent + cached),
        "load_1min": [
            round(min(r["load_min"] for r in alone + agent + cached), 2),
            round(max(r["load_max"] for r in alone + agent + cached), 2),
        ],
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
