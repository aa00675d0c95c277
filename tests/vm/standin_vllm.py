#!/usr/bin/env python3
"""A stand-in for `vllm serve` on the GPU-less VM test bed.

Serves ``GET /health`` on 127.0.0.1:8000 (``--host``/``--port`` override): 503 while "loading", then 200.
Loading lasts ``--load-seconds`` (default 2) and, in addition, as long as the file named by
``--hold-file`` exists, so a test can keep the server in its loading phase for as long as it needs and
then release it without any timing assumption.

Once healthy, ``GET /v1/models`` lists one model and ``POST /v1/completions`` answers one choice (the agent's
readiness gate sends a one-token completion before READY=1); 503 while loading.

``GET /standin`` answers JSON describing the process as the kernel sees it (pid, uid, CPU affinity,
the Cpus/Mems_allowed lists), which the tests compare with the NUMA node they configured.

Every other argument (``serve``, the model, vLLM flags) is accepted and ignored: the launcher may add
whatever it adds for the real vLLM. Standard library only; runs on the guest's Python 3.11.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import signal
import sys
import threading
import time
from typing import Any, Optional


def _status_lists() -> dict[str, str]:
    out: dict[str, str] = {}
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("Cpus_allowed_list", "Mems_allowed_list"):
                out[key] = value.strip()
    return out


class _State:
    def __init__(self, load_seconds: float, hold_file: Optional[str]) -> None:
        self.started = time.monotonic()
        self.load_seconds = load_seconds
        self.hold_file = hold_file

    def healthy(self) -> bool:
        if time.monotonic() - self.started < self.load_seconds:
            return False
        return not (self.hold_file and os.path.exists(self.hold_file))


def _handler(state: _State, argv: list[str]) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def _send(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/health":
                if state.healthy():
                    self._send(200, {"status": "ok"})
                else:
                    self._send(503, {"status": "loading"})
            elif self.path == "/v1/models" and state.healthy():
                self._send(200, {"object": "list", "data": [{"id": "standin", "object": "model"}]})
            elif self.path == "/standin":
                info: dict[str, Any] = {
                    "pid": os.getpid(),
                    "uid": os.getuid(),
                    "affinity": sorted(os.sched_getaffinity(0)),
                    "argv": argv,
                }
                info.update(_status_lists())
                self._send(200, info)
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self) -> None:
            # The agent's readiness gate: one completion of one token, once healthy.
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path != "/v1/completions":
                self._send(404, {"error": "not found"})
            elif not state.healthy():
                self._send(503, {"error": {"message": "loading"}})
            else:
                self._send(
                    200,
                    {
                        "object": "text_completion",
                        "model": "standin",
                        "choices": [{"index": 0, "text": " world", "finish_reason": "length"}],
                    },
                )

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler


def main(argv: Optional[list[str]] = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--load-seconds", type=float, default=2.0)
    parser.add_argument("--hold-file", default=None)
    args, _unknown = parser.parse_known_args(args_in)

    state = _State(args.load_seconds, args.hold_file)
    server = http.server.ThreadingHTTPServer((args.host, args.port), _handler(state, args_in))

    def _stop(_signum: int, _frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    print(f"standin-vllm listening on {args.host}:{args.port}", flush=True)
    server.serve_forever()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
