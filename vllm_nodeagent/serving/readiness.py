"""The readiness gate's second half: one real completion through vLLM's OpenAI API.

``/health`` answers 200 as soon as the API server is up, even when the engine cannot produce a token (seen with
real vLLM on the CPU backend: a model whose head size the attention kernel refuses answered /health, then died on
the first request). So READY=1 waits for a one-token ``/v1/completions`` as well. The request runs in a thread:
the daemon's loop keeps pinging the watchdog and watching the child while a slow first request compiles.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Optional

from vllm_nodeagent.config import VllmConfig

SMOKE_PROMPT = "Hello"


def api_base(health_url: str) -> str:
    """``http://127.0.0.1:8000/health`` → ``http://127.0.0.1:8000`` (the OpenAI routes live beside /health)."""
    parts = urllib.parse.urlsplit(health_url)
    return f"{parts.scheme}://{parts.netloc}"


def api_key(cfg: VllmConfig) -> str:
    """vLLM's ``--api-key`` (or ``VLLM_API_KEY`` in ``[vllm] env``): /v1 routes refuse requests without it."""
    args = list(cfg.args)
    for i, arg in enumerate(args):
        if arg == "--api-key" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--api-key="):
            return arg.split("=", 1)[1]
    return cfg.env.get("VLLM_API_KEY", "")


def _request(url: str, key: str, timeout: float, body: Optional[dict[str, Any]] = None) -> Any:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(  # noqa: S310 - health_url is validated as http(s)
        url, data=data, headers=headers, method="POST" if body is not None else "GET"
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - http(s) URL from root's config
        return json.loads(resp.read().decode("utf-8", errors="replace"))


def served_model(base: str, key: str, timeout: float, fallback: str) -> str:
    """The first model /v1/models lists (the served name, whatever --served-model-name said), else ``fallback``."""
    try:
        data = _request(f"{base}/v1/models", key, timeout)
        models = data.get("data") if isinstance(data, dict) else None
        if isinstance(models, list) and models and isinstance(models[0], dict) and models[0].get("id"):
            return str(models[0]["id"])
    except (urllib.error.URLError, OSError, ValueError):
        return fallback
    return fallback


def smoke_completion(base: str, key: str, timeout: float, model_hint: str) -> tuple[bool, str]:
    """(True, what came back) when a one-token completion succeeds; (False, why) otherwise."""
    t0 = time.monotonic()
    model = served_model(base, key, timeout, model_hint)
    body = {"model": model, "prompt": SMOKE_PROMPT, "max_tokens": 1, "temperature": 0}
    try:
        data = _request(f"{base}/v1/completions", key, timeout, body)
    except urllib.error.HTTPError as exc:
        return False, f"/v1/completions answered HTTP {exc.code} for model {model!r}"
    except (urllib.error.URLError, OSError) as exc:
        return False, f"/v1/completions: {getattr(exc, 'reason', exc)}"
    except ValueError as exc:
        return False, f"/v1/completions: not JSON ({exc})"
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict) or "text" not in choices[0]:
        return False, f"/v1/completions for model {model!r} returned no choice"
    return True, f"model {model!r} answered {choices[0]['text']!r} in {time.monotonic() - t0:.2f}s"


class SmokeCheck:
    """One smoke completion running in a daemon thread; ``result()`` is None until it finished."""

    def __init__(self, cfg: VllmConfig) -> None:
        self._result: Optional[tuple[bool, str]] = None
        base, key, timeout, hint = api_base(cfg.health_url), api_key(cfg), cfg.smoke_timeout_s, cfg.model
        self._thread = threading.Thread(
            target=self._run, args=(base, key, timeout, hint), daemon=True, name="vllm-smoke"
        )
        self._thread.start()

    def _run(self, base: str, key: str, timeout: float, hint: str) -> None:
        try:
            self._result = smoke_completion(base, key, timeout, hint)
        except Exception as exc:  # a thread must hand every outcome back to the loop, never die silently
            self._result = (False, f"{type(exc).__name__}: {exc}")

    def result(self) -> Optional[tuple[bool, str]]:
        return self._result
