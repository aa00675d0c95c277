#!/usr/bin/env python3
"""A stand-in for ``vllm serve`` for the daemon tests (standard library only).

* ``GET /health``: 503 while "loading" (``--load-seconds``, and for as long as ``--hold-file`` exists), then 200.
* ``GET /v1/models`` lists the served name (``--served-model-name``, else the model argument); ``POST
  /v1/completions`` answers one choice once healthy, for that name only (404 for another). ``--smoke-fail``:
  /health says 200 but every completion answers 500 (the engine that cannot produce a token);
  ``--smoke-hold-file``: completions answer 503 while that file exists. Completions are counted in ``--record``.
  ``--refuse-while-loading`` opens the port only after loading, like the real vLLM.
* ``--record FILE``: appends one JSON line per start and per worker: pid, ppid, uid, role, the
  ``Cpus_allowed_list``/``Mems_allowed_list`` of /proc/self/status, the memory policy from /proc/self/numa_maps,
  argv, and selected environment variables.
* ``--workers N``: spawns N worker processes (children; they keep running until signalled, like vLLM's
  workers, and do not handle SIGTERM themselves).
* ``--engine-workers N``: real vLLM's shape: the API server starts an engine process (role "engine"), which
  starts N workers; all in the server's process group, none watching its parent (a leader that dies leaves
  them running, PPID 1).
* Crashing: ``--crash-after S`` (or env ``STANDIN_CRASH_AFTER``) exits with status 3 S seconds after it became
  healthy; ``--crash-during-load`` (or env ``STANDIN_CRASH_DURING_LOAD=1``) exits 4 while loading;
  ``--crash-during-load-while FILE`` does so only while FILE exists.
* ``--compile-file REL``: vLLM's compile cache at start: ``$VLLM_CACHE_ROOT/REL`` is read when it is there (a hit)
  and written with this pid when not, before loading (so a crash while loading leaves it); the server's record
  says which (``compile``: "hit" or "wrote").

Any other argument (``serve``, the model, vLLM flags) is accepted and ignored.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Optional

ENV_KEYS = (
    "CUDA_VISIBLE_DEVICES",
    "CUDA_DEVICE_ORDER",
    "HOME",
    "PATH",
    "LANG",
    "HF_HOME",
    "USER",
    "NOTIFY_SOCKET",
    "VLLM_WORKER_MULTIPROC_METHOD",
    "STANDIN_MARK",
    "XDG_CACHE_HOME",
    "TORCHINDUCTOR_CACHE_DIR",
    "TRITON_CACHE_DIR",
    "VLLM_CACHE_ROOT",
)


def describe(role: str, argv: list[str]) -> dict[str, Any]:
    info: dict[str, Any] = {
        "role": role,
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "uid": os.getuid(),
        "gid": os.getgid(),
        "time": time.time(),
        "argv": argv,
    }
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("Cpus_allowed_list", "Mems_allowed_list"):
                info[key] = value.strip()
    policies: dict[str, int] = {}
    with open("/proc/self/numa_maps", encoding="ascii") as fh:
        for line in fh:
            parts = line.split(None, 2)
            if len(parts) >= 2:
                policies[parts[1]] = policies.get(parts[1], 0) + 1
    info["mempolicy"] = max(policies, key=lambda k: policies[k]) if policies else ""
    info["env"] = {k: os.environ[k] for k in ENV_KEYS if k in os.environ}
    info["environ"] = dict(os.environ)  # all of it: the cache key vLLM derives from VLLM_* (test_compile_cache_start)
    return info


def compile_into(rel: str) -> str:
    """A compile cache entry under VLLM_CACHE_ROOT: "hit" when it is there, else written now ("wrote")."""
    path = os.path.join(os.environ["VLLM_CACHE_ROOT"], rel)
    if os.path.isfile(path):
        return "hit"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(f"compiled by pid {os.getpid()}\n")
    return "wrote"


def record(path: Optional[str], info: dict[str, Any]) -> None:
    if not path:
        return
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(info) + "\n")


def engine_main(record_path: Optional[str], ignore_term: bool, workers: int) -> int:
    if ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    record(record_path, describe("engine", sys.argv))
    spawn_workers(record_path, ignore_term, workers)
    while True:
        time.sleep(3600)


def spawn_workers(record_path: Optional[str], ignore_term: bool, n: int, role: str = "--standin-worker") -> None:
    for _ in range(n):
        subprocess.Popen(
            [
                sys.executable,
                os.path.abspath(__file__),
                role,
                *(["--record", record_path] if record_path else []),
                *(["--workers-ignore-term"] if ignore_term else []),
            ]
        )


def worker_main(record_path: Optional[str], ignore_term: bool) -> int:
    if ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    record(record_path, describe("worker", sys.argv))
    while True:
        time.sleep(3600)


class State:
    def __init__(self, load_seconds: float, hold_file: Optional[str]) -> None:
        self.started = time.monotonic()
        self.load_seconds = load_seconds
        self.hold_file = hold_file
        self.healthy_at: Optional[float] = None
        self.served = ""
        self.smoke_fail = False
        self.smoke_hold: Optional[str] = None
        self.record: Optional[str] = None

    def healthy(self) -> bool:
        if time.monotonic() - self.started < self.load_seconds:
            return False
        if self.hold_file and os.path.exists(self.hold_file):
            return False
        if self.healthy_at is None:
            self.healthy_at = time.monotonic()
        return True


def make_handler(state: State) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def reply(self, code: int, data: Any) -> None:
            body = json.dumps(data).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/health":
                self.reply(200 if state.healthy() else 503, {})
            elif self.path == "/v1/models" and state.healthy():
                self.reply(200, {"object": "list", "data": [{"id": state.served, "object": "model"}]})
            else:
                self.reply(404 if state.healthy() else 503, {})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            try:
                req = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                req = {}
            if self.path != "/v1/completions":
                self.reply(404, {})
                return
            if not state.healthy() or (state.smoke_hold and os.path.exists(state.smoke_hold)):
                code = 503
            elif state.smoke_fail:
                code = 500
            elif req.get("model") != state.served:
                code = 404
            else:
                code = 200
            record(
                state.record,
                {
                    "role": "completion",
                    "pid": os.getpid(),
                    "time": time.time(),
                    "code": code,
                    "model": req.get("model"),
                    "max_tokens": req.get("max_tokens"),
                },
            )
            if code != 200:
                self.reply(code, {"error": {"message": "standin says no", "code": code}})
                return
            self.reply(
                200,
                {
                    "object": "text_completion",
                    "model": state.served,
                    "choices": [{"index": 0, "text": " world", "finish_reason": "length"}],
                },
            )

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler


def main() -> int:
    argv = sys.argv[1:]
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--load-seconds", type=float, default=0.2)
    p.add_argument("--hold-file", default=None)
    p.add_argument("--record", default=None)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--crash-after", type=float, default=float(os.environ.get("STANDIN_CRASH_AFTER", "-1")))
    p.add_argument(
        "--crash-during-load", action="store_true", default=os.environ.get("STANDIN_CRASH_DURING_LOAD") == "1"
    )
    p.add_argument("--crash-during-load-while", default="")
    p.add_argument("--compile-file", default="")
    p.add_argument("--refuse-while-loading", action="store_true")
    p.add_argument("--workers-ignore-term", action="store_true", help="workers survive SIGTERM (need SIGKILL)")
    p.add_argument("--standin-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--engine-workers", type=int, default=0)
    p.add_argument("--standin-engine", type=int, default=-1, help=argparse.SUPPRESS)
    p.add_argument("--model", default="")
    p.add_argument("--served-model-name", default="")
    p.add_argument("--smoke-fail", action="store_true")
    p.add_argument("--smoke-hold-file", default=None)
    args, unknown = p.parse_known_args(argv)
    if args.standin_worker:
        return worker_main(args.record, args.workers_ignore_term)
    if args.standin_engine >= 0:
        return engine_main(args.record, args.workers_ignore_term, args.standin_engine)

    compiled = compile_into(args.compile_file) if args.compile_file else ""
    record(args.record, {**describe("server", argv), **({"compile": compiled} if compiled else {})})
    spawn_workers(args.record, args.workers_ignore_term, args.workers)
    if args.engine_workers:
        spawn_workers(args.record, args.workers_ignore_term, 1, f"--standin-engine={args.engine_workers}")
    state = State(args.load_seconds, args.hold_file)
    positional = [a for a in unknown if not a.startswith("-") and a != "serve"]
    state.served = args.served_model_name or args.model or (positional[0] if positional else "standin")
    state.smoke_fail, state.smoke_hold, state.record = args.smoke_fail, args.smoke_hold_file, args.record
    if args.crash_during_load or (args.crash_during_load_while and os.path.exists(args.crash_during_load_while)):
        time.sleep(min(args.load_seconds, 0.1))
        return 4
    if args.refuse_while_loading:
        while not state.healthy():
            time.sleep(0.05)
    server = http.server.ThreadingHTTPServer((args.host, args.port), make_handler(state))
    stop = threading.Event()

    def on_term(_signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"standin-vllm pid {os.getpid()} listening on {args.host}:{args.port}", flush=True)
    while not stop.wait(0.05):
        healthy_at = state.healthy_at
        if args.crash_after >= 0 and healthy_at is not None and time.monotonic() - healthy_at >= args.crash_after:
            print("standin-vllm crashing as told", flush=True)
            os._exit(3)
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
