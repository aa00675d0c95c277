"""Replays the issue-23 runs on the lent H200 (tests/gpu/h200-2026-12-02-tts) without a GPU.

What was recorded there — vllm.bytecode's count before and after ``apply --only vllm.bytecode``, the hashes of
every .py on the vLLM user's path and the installed versions, the result lines, and each start's stamped log —
is fed back through the agent's code and the harness's parser: a change that would count, judge, print or split
the start differently from what the machine showed fails here. No timing is asserted; the table in the fixture's
README is what tts23_report.py prints from the recorded rows.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from vllm_nodeagent.host import Host
from vllm_nodeagent.settings.bytecode import Bytecode
from vllm_nodeagent.settings.engine import Outcome

GPU = Path(__file__).parent / "gpu"
RUN = GPU / "h200-2026-12-02-tts"


def _module(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, GPU / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def jsonl(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (RUN / name).read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("machine", ["a", "b"])
def test_bytecode_before_after_and_same_code(machine: str, tmp_path: Path) -> None:
    before, after = jsonl(f"{machine}-bytecode.jsonl")
    assert before["check"]["status"] == "warn" and after["check"]["status"] == "pass"
    # the same files, byte for byte, and the same installed versions: compiling changed nothing vLLM runs
    assert before["py_sha256"] == after["py_sha256"] and before["py_files"] == after["py_files"] > 30000
    assert before["versions"] == after["versions"] == "0.26.0 2.11.0"
    # the agent's own judgement of the recorded counts is the one doctor printed there
    t = Bytecode(Host(str(tmp_path)), None, "/var/lib/vllm-nodeagent")  # nothing remembered: judged by count
    assert not t.compliant(before["check"]["current"]) and t.compliant(after["check"]["current"])
    assert before["check"]["desired"] == t.desired()


@pytest.mark.parametrize("machine", ["a", "b"])
def test_apply_result_line_is_what_the_engine_prints(machine: str) -> None:
    from vllm_nodeagent.commands.apply import render_outcome  # the one formatter of result lines

    line = (RUN / f"{machine}-apply-bytecode.txt").read_text().splitlines()[0]
    m = re.fullmatch(r"changed\s+vllm\.bytecode\s+(.+?) → (.+?)  \((.+)\)", line)
    assert m, line
    o = Outcome("vllm.bytecode", "changed", m.group(2), "<= 2% without bytecode", m.group(3), previous=m.group(1))
    assert render_outcome(o) == line
    assert m.group(1) == "15055 of 35114 files without bytecode" and m.group(2).startswith("0 of 35114")
    again = (RUN / f"{machine}-apply-bytecode-again.txt").read_text()
    assert again.startswith("ok ") and "unchanged since" in again  # redone only when the environment changes


def test_phase_split_reparses_every_recorded_start() -> None:
    tts = _module("time_to_serve")
    for name, logs, prefix in (
        ("b-r1-results.jsonl", "b-logs", "r1-"),
        ("b-r5-results.jsonl", "b-logs", "r5-"),
        ("a-results.jsonl", "a-logs", ""),
    ):
        for r in jsonl(name):
            text = (RUN / logs / f"{prefix}{r['case']}-{r['n']}.log").read_text()
            got = tts.phases(text, r["ready_s"])  # phases added since the run are not in the record
            assert {k: got[k] for k in r["phases"]} == r["phases"], (name, r["case"])
            assert tts.vllm_timings(text) == r["vllm"], (name, r["case"])
            assert r["phases"]["api_import_s"] is not None and r["phases"]["engine_init_s"] is not None


def test_fixture_readme_table_is_the_report() -> None:
    report = _module("tts23_report")
    rs = [r for r in report.rows(RUN) if r["case"] != "warmup"]
    readme = (RUN / "README.md").read_text()
    assert report.table(rs) in readme
    assert report.summary(rs) in readme
    # every case, at least three rounds of the eager ones that decide the default
    for case in ("warm", "cold", "warmup_overlap"):
        assert sorted(r["round"] for r in rs if r["case"] == case) == [1, 2, 3]
