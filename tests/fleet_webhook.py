"""Alertmanager's webhook receiver for tests/test_fleet_e2e.py: an HTTP server on 127.0.0.1 that keeps every
notification with the wall-clock time it arrived, so the test can measure firing and resolve times."""

from __future__ import annotations

import http.server
import json
import threading
import time
from typing import Any, Optional


class Webhook:
    """Alertmanager's webhook receiver: every notification with the time it arrived."""

    def __init__(self) -> None:
        self.got: list[tuple[float, dict[str, Any]]] = []
        webhook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                webhook.got.append((time.time(), json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def first(self, alertname: str, status: str, instance: str, after: float = 0.0) -> Optional[tuple[float, Any]]:
        for t, payload in list(self.got):
            for a in payload.get("alerts", []):
                labels = a["labels"]
                if (
                    t >= after
                    and labels.get("alertname") == alertname
                    and a["status"] == status
                    and labels.get("instance") == instance
                ):
                    return t, a
        return None

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
