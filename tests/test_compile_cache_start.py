"""The compile caches across real daemon starts (issue 23.4): a daemon with the stand-in vLLM, started four times.
Two starts with the same config give vLLM the very same environment (vLLM hashes its VLLM_* variables into the
cache key: a pid, a timestamp, a port or a scratch path there would make every start compile again and grow the
cache for ever), and the cache it left is kept; an env change in the config reaches vLLM (vLLM keys on it itself,
the agent keeps the cache); a model change empties the cache. And the proof: a start that wrote the cache and
never served (vLLM exited, or the operator stopped it, while loading) leaves it to be emptied by the next start;
one that served keeps it through a kill -9 and the crash restart."""

# ruff: noqa: F811 - the tests take test_daemon's `bed` fixture, imported by name

from __future__ import annotations

import json
import os
import secrets
import signal
from pathlib import Path
from typing import Any

import pytest
from test_daemon import Bed, bed, wait_until  # noqa: F401

NO_BYTECODE = {"bytecode": False}  # the daemon's bytecode step (issue 23.1) is not what these starts are about
STABLE_PREFIXES = ("VLLM_", "TORCH", "TRITON_", "CUDA_", "HF_", "XDG_", "HOME", "PATH")


def cache_events(b: Bed) -> list[dict[str, Any]]:
    """This daemon run's compile_cache events but the proof (each start that served logs one)."""
    return [e for e in b.events() if str(e.get("event", "")).startswith("compile_cache") and "proven" not in e["event"]]


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
    events = cache_events(b)
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
    ev = [e["event"] for e in cache_events(bed)]
    assert ev[:2] == ["compile_cache_cleared", want], ev  # the first start (nothing stored), then the restart


REL = "torch_compile_cache/ab12/rank_0_0/model.py"  # what the stand-in "compiles" (--compile-file)


def fingerprint(b: Bed) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((b.root / "var/cache/vllm-nodeagent/root/compile-fingerprint.json").read_text())
    return doc


def entry(b: Bed) -> Path:
    return b.root / "var/cache/vllm-nodeagent/root/vllm" / REL


def serve_once(b: Bed, n: int) -> None:
    """Start the daemon, wait for the n-th vLLM start's READY=1 (sent after the proof is written), stop it."""
    b.start()
    wait_until(lambda: sum(line == "READY=1" for line in b.notify.lines()) >= n, f"READY=1 of start {n}")
    b.signal(signal.SIGTERM)
    assert b.wait_exit() == 0


def test_a_start_that_exits_while_loading_leaves_a_cache_the_next_start_empties(bed: Bed) -> None:
    """The first start writes its compile entry and vLLM exits while loading (a crash mid-compile): the record
    stays unproven, and the next start (same config, same fingerprint) empties the cache once and compiles
    again; that one serves, so the start after it is a cache hit."""
    crash = bed.base / "share/crash"
    crash.write_text("")
    bed.write_config(vllm=NO_BYTECODE, standin_args=["--compile-file", REL, "--crash-during-load-while", str(crash)])
    bed.start()
    assert bed.wait_exit() == 1  # the first start failed: vLLM ended before it was ready
    first = bed.records()[0]
    assert first["compile"] == "wrote" and entry(bed).read_text() == f"compiled by pid {first['pid']}\n"
    assert fingerprint(bed)["proven"] is False
    assert [e["changed"] for e in cache_events(bed)] == ["fingerprint"]

    crash.unlink()
    serve_once(bed, 1)
    (ev,) = cache_events(bed)
    assert (ev["event"], ev["changed"]) == ("compile_cache_cleared", "unproven") and "never served" in ev["detail"]
    second = bed.records()[1]
    assert second["compile"] == "wrote"  # the half-written entry was gone: compiled again, not loaded
    assert entry(bed).read_text() == f"compiled by pid {second['pid']}\n"
    assert fingerprint(bed)["proven"] is True and fingerprint(bed)["proven_at"]

    serve_once(bed, 2)
    assert [e["event"] for e in cache_events(bed)] == ["compile_cache_kept"] and bed.records()[2]["compile"] == "hit"


def test_a_start_stopped_while_loading_is_unproven_too(bed: Bed) -> None:
    """The operator stops the daemon (SIGTERM) while vLLM still loads and compiles: what it wrote may be partial,
    so the next start empties the cache as after a crash."""
    bed.hold.write_text("")  # /health says 503 while it exists: loading
    bed.write_config(vllm=NO_BYTECODE, standin_args=["--compile-file", REL, "--hold-file", str(bed.hold)])
    bed.start()
    wait_until(bed.records, "vLLM's start")
    assert bed.records()[0]["compile"] == "wrote" and entry(bed).is_file()
    bed.signal(signal.SIGTERM)
    assert bed.wait_exit() == 0
    assert fingerprint(bed)["proven"] is False and "READY=1" not in bed.notify.lines()

    bed.hold.unlink()
    serve_once(bed, 1)
    assert [(e["event"], e["changed"]) for e in cache_events(bed)] == [("compile_cache_cleared", "unproven")]
    assert bed.records()[1]["compile"] == "wrote"


def test_a_start_that_served_keeps_its_cache_through_a_kill_and_the_crash_restart(bed: Bed) -> None:
    """vLLM served, then was killed (-9): not a crash mid-compile. The daemon's crash restart keeps the cache
    and vLLM loads what it compiled."""
    bed.write_config(vllm={**NO_BYTECODE, "restart_backoff_initial_s": 0.3}, standin_args=["--compile-file", REL])
    bed.start()
    bed.notify.wait_for("READY=1")
    assert fingerprint(bed)["proven"] is True  # written before READY=1
    first = bed.records()[0]
    os.kill(first["pid"], signal.SIGKILL)
    wait_until(lambda: len(bed.records()) >= 2, "the crash restart")
    wait_until(lambda: sum(e.get("event") == "vllm_healthy" for e in bed.events()) >= 2, "the restart serving")
    bed.signal(signal.SIGTERM)
    assert bed.wait_exit() == 0
    assert [e["event"] for e in cache_events(bed)] == ["compile_cache_cleared", "compile_cache_kept"]
    assert bed.records()[1]["compile"] == "hit" and entry(bed).read_text() == f"compiled by pid {first['pid']}\n"
    assert any(e.get("event") == "vllm_exited" and e.get("pid") == first["pid"] for e in bed.events())
