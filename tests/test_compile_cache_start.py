"""The compile caches across real daemon starts (issue 23.4): a daemon with the stand-in vLLM, started four times.
Two starts with the same config give vLLM the very same environment (vLLM hashes its VLLM_* variables into the
cache key: a pid, a timestamp, a port or a scratch path there would make every start compile again and grow the
cache for ever), and the cache it left is kept; an env change in the config reaches vLLM (vLLM keys on it itself,
the agent keeps the cache); a model change empties the cache."""

# ruff: noqa: F811 - the tests take test_daemon's `bed` fixture, imported by name

from __future__ import annotations

import json
import os
import secrets
import signal
from typing import Any

import pytest
from test_daemon import Bed, bed, wait_until  # noqa: F401

NO_BYTECODE = {"bytecode": False}  # the daemon's bytecode step (issue 23.1) is not what these starts are about
STABLE_PREFIXES = ("VLLM_", "TORCH", "TRITON_", "CUDA_", "HF_", "XDG_", "HOME", "PATH")


def one_start(b: Bed, n: int) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """Start the daemon (an agent environment of its own: pid, invocation id, scratch dir, a stray VLLM_ var),
    wait for the n-th vLLM start, stop; vLLM's whole environment and the daemon's compile_cache events."""
    noise = {
        "INVOCATION_ID": secrets.token_hex(16),
        "TMPDIR": f"/tmp/run-{secrets.token_hex(4)}",
        "VLLM_AGENT_SIDE_NOISE": secrets.token_hex(4),  # the agent's own VLLM_* never reaches vLLM
    }
    b.start(env=noise)
    server = wait_until(lambda: b.records()[n - 1] if len(b.records()) >= n else None, f"vLLM start {n}")
    wait_until(lambda: sum(line == "READY=1" for line in b.notify.lines()) >= n, f"READY=1 of start {n}")
    b.signal(signal.SIGTERM)
    assert b.wait_exit() == 0
    events = [e for e in b.events() if str(e.get("event", "")).startswith("compile_cache")]
    assert b.proc is not None
    environ: dict[str, str] = server["environ"]
    assert not any(
        str(b.proc.pid) in v or noise["TMPDIR"] in v for k, v in environ.items() if k.startswith(STABLE_PREFIXES)
    )
    return environ, events


def test_same_config_same_environment_and_the_cache_is_kept(bed: Bed) -> None:
    bed.write_config(vllm=NO_BYTECODE)
    leaf = bed.root / "var/cache/vllm-nodeagent/root"
    env1, ev1 = one_start(bed, 1)
    assert [e["event"] for e in ev1] == ["compile_cache_cleared"] and ev1[0]["changed"] == "fingerprint"
    assert env1["VLLM_CACHE_ROOT"] == str(leaf / "vllm") and "VLLM_AGENT_SIDE_NOISE" not in env1
    artifact = leaf / "vllm/torch_compile_cache/ab12/rank_0_0/model.py"
    artifact.parent.mkdir(parents=True)
    artifact.write_text("compiled")  # what a compiled start leaves

    env2, ev2 = one_start(bed, 2)
    assert env2 == env1  # byte for byte: vLLM's cache key from the environment cannot differ
    assert [e["event"] for e in ev2] == ["compile_cache_kept"] and artifact.read_text() == "compiled"
    fingerprint = json.loads((leaf / "compile-fingerprint.json").read_text())
    assert fingerprint["fields"]["model"] == "standin-model@main (not in the HF cache)"

    bed.write_config(vllm={**NO_BYTECODE, "env": {"VLLM_ATTENTION_BACKEND": "FLASH_ATTN"}})
    env3, ev3 = one_start(bed, 3)
    assert env3 != env1 and env3["VLLM_ATTENTION_BACKEND"] == "FLASH_ATTN"
    assert {k: v for k, v in env3.items() if k != "VLLM_ATTENTION_BACKEND"} == env1
    assert [e["event"] for e in ev3] == ["compile_cache_kept"] and artifact.exists()  # vLLM keys on its env itself

    bed.write_config(vllm={**NO_BYTECODE, "model": "other-model"})
    _, ev4 = one_start(bed, 4)
    assert [e["event"] for e in ev4] == ["compile_cache_cleared"] and ev4[0]["changed"] == "model"
    assert not artifact.exists() and not (leaf / "vllm/torch_compile_cache").exists()
    assert sorted(os.listdir(leaf)) == ["compile-fingerprint.json"]


@pytest.mark.parametrize(("keep", "want"), [("true", "compile_cache_kept"), ("false", "compile_cache_cleared")])
def test_a_crash_restart_judges_the_caches_again(bed: Bed, keep: str, want: str) -> None:
    """The daemon restarts a crashed vLLM with the plan it has: the caches are judged at that start too —
    kept while unchanged, cleared at each start with keep_compile_cache = false."""
    bed.write_config(
        vllm={**NO_BYTECODE, "restart_backoff_initial_s": 0.3},
        agent=f"keep_compile_cache = {keep}",
        standin_args=["--crash-after", "1.0"],
    )
    bed.start()
    wait_until(lambda: len(bed.records()) >= 2, "a crash restart")
    bed.signal(signal.SIGTERM)
    assert bed.wait_exit() == 0
    ev = [e["event"] for e in bed.events() if str(e.get("event", "")).startswith("compile_cache")]
    assert ev[:2] == ["compile_cache_cleared", want], ev  # the first start (nothing stored), then the restart
