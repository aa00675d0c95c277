"""serving/compile_keep's proof (issue 23.4): the fingerprint record says whether a start that reached serving
used the caches it describes. A start writes it unproven when it (re)builds the caches, and when it starts vLLM
with another launch than the proven one; ``prove`` (the serve keeper at READY) marks it proven. A start that
finds it unproven empties the caches (``changed=unproven``); a proven one is kept through later crashes; a
record from before the field counts as proven (an agent upgrade is no mass recompile)."""

# ruff: noqa: F811 - the tests take test_compile_cache's `events` fixture, imported by name

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path
from typing import Any

from test_compile_cache import CPU_ONLY, compiled, events, lines, start_ctx  # noqa: F401

from vllm_nodeagent.checks.status import Status
from vllm_nodeagent.commands.doctor import hint_line
from vllm_nodeagent.config import VllmConfig
from vllm_nodeagent.serving import compile_cache as cc
from vllm_nodeagent.serving.compile_keep import doctor_check, keep_or_clear, launch_of, prove


def stored(leaf: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((Path(leaf) / cc.FINGERPRINT_FILE).read_text())
    return doc


def cache_events(out: io.StringIO) -> list[dict[str, object]]:
    return [e for e in lines(out) if str(e["event"]).startswith("compile_cache")]


def test_a_start_writes_it_unproven_and_serving_proves_it(tmp_path: Path, events: io.StringIO) -> None:
    ctx, vcfg, who, leaf = start_ctx(tmp_path)
    assert keep_or_clear(ctx, vcfg, who, leaf, CPU_ONLY) == "cleared"
    first = stored(leaf)
    assert first["proven"] is False and "proven_at" not in first and first["launch"] == launch_of(vcfg)
    artifact = compiled(leaf)
    at = prove(ctx, vcfg, who)
    assert at is not None and at.endswith("Z")
    second = stored(leaf)
    assert second["proven"] is True and second["proven_at"] == at
    assert second["digest"] == first["digest"] and second["fields"] == first["fields"]  # a proof is no new build
    assert (Path(leaf) / cc.FINGERPRINT_FILE).stat().st_mode & 0o777 == 0o600
    assert prove(ctx, vcfg, who) is None  # already proven: the time of the first proof stays
    assert keep_or_clear(ctx, vcfg, who, leaf, CPU_ONLY) == "kept" and artifact.read_text() == "compiled"
    assert stored(leaf) == second  # a restart with the same launch (a crash restart) writes nothing
    kept = cache_events(events)[-1]
    assert kept["event"] == "compile_cache_kept" and kept["proof"] == f"proven {at}"


def test_a_start_that_never_served_leaves_a_cache_the_next_start_empties(tmp_path: Path, events: io.StringIO) -> None:
    """The start that (re)built the caches crashed, timed out or was stopped before it served: what it wrote
    may be half an Inductor/Triton entry. The next start empties them once and starts unproven again."""
    ctx, vcfg, who, leaf = start_ctx(tmp_path)
    keep_or_clear(ctx, vcfg, who, leaf, CPU_ONLY)
    artifact = compiled(leaf)  # written by the start that then crashed mid-compile: never proven
    assert keep_or_clear(ctx, vcfg, who, leaf, CPU_ONLY) == "cleared" and not artifact.exists()
    assert (Path(leaf) / ".cache/huggingface/hub/models--org--name/blobs/w.safetensors").exists()  # weights stay
    assert stored(leaf)["proven"] is False
    cleared = cache_events(events)[-1]
    assert cleared["event"] == "compile_cache_cleared" and cleared["changed"] == "unproven"
    assert cleared["detail"] == cc.NEVER_SERVED and "never served" in str(cleared["detail"])
    artifact = compiled(leaf)
    assert prove(ctx, vcfg, who) is not None  # this one served
    assert keep_or_clear(ctx, vcfg, who, leaf, CPU_ONLY) == "kept" and artifact.exists()


def test_a_record_from_before_the_proof_counts_as_proven(tmp_path: Path, events: io.StringIO) -> None:
    """The upgrade path: the previous agent wrote the record without ``proven`` (and without ``launch``). The
    first start of the new agent keeps the caches; it records its launch, unproven until it serves."""
    ctx, vcfg, who, leaf = start_ctx(tmp_path)
    keep_or_clear(ctx, vcfg, who, leaf, CPU_ONLY)
    old = {k: v for k, v in stored(leaf).items() if k not in ("proven", "proven_at", "launch")}
    assert set(old) == {"schema", "digest", "fields"}  # what the agent before this one wrote
    (Path(leaf) / cc.FINGERPRINT_FILE).write_bytes(cc.encode(old))
    assert cc.is_proven(old)
    artifact = compiled(leaf)
    ok = doctor_check(ctx, vcfg, who, CPU_ONLY)
    assert ok.status == Status.PASS and "written before starts were proven" in ok.detail
    assert keep_or_clear(ctx, vcfg, who, leaf, CPU_ONLY) == "kept" and artifact.read_text() == "compiled"
    assert stored(leaf)["proven"] is False and stored(leaf)["digest"] == old["digest"]
    assert prove(ctx, vcfg, who) is not None and stored(leaf)["proven"] is True


def test_another_launch_keeps_the_caches_unproven_until_it_serves(tmp_path: Path, events: io.StringIO) -> None:
    """Other args or env: the fingerprint is the same (the caches are kept) but vLLM may compile new entries, so
    the record is unproven until that start serves; a proof for another launch is not taken."""
    ctx, vcfg, who, leaf = start_ctx(tmp_path)
    keep_or_clear(ctx, vcfg, who, leaf, CPU_ONLY)
    prove(ctx, vcfg, who)
    artifact = compiled(leaf)
    other = VllmConfig(model=vcfg.model, python=vcfg.python, user="me", args=["--max-model-len", "4096"])
    assert launch_of(other) != launch_of(vcfg)
    assert keep_or_clear(ctx, other, who, leaf, CPU_ONLY) == "kept" and artifact.exists()
    assert stored(leaf)["proven"] is False and stored(leaf)["launch"] == launch_of(other)
    assert "another launch" in str(cache_events(events)[-1]["proof"])
    assert prove(ctx, vcfg, who) is None  # the old launch's start does not prove what the new one wrote
    assert keep_or_clear(ctx, other, who, leaf, CPU_ONLY) == "cleared" and not artifact.exists()  # it never served


def test_doctor_warns_for_an_unproven_cache_and_passes_with_the_proof(tmp_path: Path, events: io.StringIO) -> None:
    ctx, vcfg, who, leaf = start_ctx(tmp_path)
    keep_or_clear(ctx, vcfg, who, leaf, CPU_ONLY)
    compiled(leaf)
    warn = doctor_check(ctx, vcfg, who, CPU_ONLY)
    assert (warn.status, warn.current) == (Status.WARN, "unproven") and warn.detail == cc.NEVER_SERVED
    assert warn.fix is not None and warn.fix.note.startswith(f"the next vLLM start empties {leaf}")
    hint = hint_line(warn, ["vllm-nodeagent"])  # doctor's line: pasted, it changes nothing
    assert hint.startswith("# the next vLLM start empties")
    assert subprocess.run(["bash", "-n", "-c", hint], check=False).returncode == 0
    at = prove(ctx, vcfg, who)
    ok = doctor_check(ctx, vcfg, who, CPU_ONLY)
    assert ok.status == Status.PASS and f"proven by a start at {at}" in ok.detail
    assert doctor_check(ctx, vcfg, who, CPU_ONLY).detail == ok.detail and (Path(leaf) / "vllm").exists()  # reads


def test_a_changed_fingerprint_is_reported_before_the_proof(tmp_path: Path, events: io.StringIO) -> None:
    """Unproven and changed: the change is what the line names (the clear happens either way)."""
    ctx, vcfg, who, leaf = start_ctx(tmp_path)
    keep_or_clear(ctx, vcfg, who, leaf, CPU_ONLY)
    site = tmp_path / "venv/lib/python3.11/site-packages"
    (site / "torch-2.11.0.dist-info/RECORD").write_bytes(b"torch/__init__.py,sha256=rebuilt,1\n")
    assert keep_or_clear(ctx, vcfg, who, leaf, CPU_ONLY) == "cleared"
    assert cache_events(events)[-1]["changed"] == "torch_record"
