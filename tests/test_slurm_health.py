"""doctor --slurm against a stand-in scontrol: drain on FAIL with the failing ids, resume only its own drain,
leave another's drain alone, WARN drains only with --drain-on-warn, prolog/epilog checks. The real Slurm proof is
tests/test_slurm_real.py (marker slurm)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import opener_for, unavailable_opener
from fakehost import FakeHost, SysfsHost, vm_no_gpu
from nvml_double import NvmlDouble

from vllm_nodeagent import cli
from vllm_nodeagent.checks.base import CheckResult
from vllm_nodeagent.checks.status import Status
from vllm_nodeagent.slurm import REASON_MAX, failing_ids, job_gpus, make_reason, parse_node

SAMPLE = '[sysctl]\n"vm.max_map_count" = 262144\n'
HERE = Path(__file__).resolve().parent
GIB = 1 << 30


@pytest.fixture
def slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "scontrol").symlink_to(HERE / "fake_scontrol.py")
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    state = tmp_path / "slurm.json"
    monkeypatch.setenv("FAKE_SLURM_STATE", str(state))
    set_state(state, "IDLE")
    return state


def set_state(path: Path, state: str, reason: str = "", by: str = "root", fail: str = "") -> None:
    path.write_text(json.dumps({"state": state, "reason": reason, "by": by, "calls": [], "fail": fail}))


def state(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def run(root: Path, capsys: pytest.CaptureFixture[str], *extra: str, config: str = SAMPLE) -> tuple[int, str]:
    cfg = root / "doctor.toml"
    cfg.write_text(config)
    cfg.chmod(0o600)
    rc = cli.main(
        ["--root", str(root), "--config", str(cfg), "doctor", "--node", "n1", *extra],
        nvml_opener=unavailable_opener,
        host_cls=SysfsHost,
    )  # type: ignore[arg-type]
    return rc, capsys.readouterr().out


def broken(tmp_path: Path) -> FakeHost:
    h = vm_no_gpu(tmp_path / "host")  # vm.max_map_count 65530 < 262144: a FAIL
    (h.root / "dev/shm").mkdir(parents=True, exist_ok=True)  # statvfs of the test's own filesystem
    return h


def fixed(h: FakeHost) -> FakeHost:
    h.sysctl("vm.max_map_count", "262144")
    return h


def test_fail_drains_with_the_failing_ids(tmp_path: Path, slurm: Path, capsys: pytest.CaptureFixture[str]) -> None:
    h = broken(tmp_path)
    rc, out = run(h.root, capsys, "--slurm")
    st = state(slurm)
    assert rc == 1
    assert st["state"] == "IDLE+DRAIN"
    assert st["reason"].startswith("vllm-nodeagent: ") and "sysctl.vm.max_map_count" in st["reason"]
    update = [c for c in st["calls"] if c[0] == "update"]
    assert update == [["update", "nodename=n1", "state=drain", f"reason={st['reason']}"]]
    assert "FAIL sysctl.vm.max_map_count: 65530 (want 262144)" in out
    assert "node n1 drained: vllm-nodeagent: " in out


def test_pass_resumes_only_its_own_drain(tmp_path: Path, slurm: Path, capsys: pytest.CaptureFixture[str]) -> None:
    h = fixed(broken(tmp_path))
    rc, out = run(h.root, capsys, "--slurm")
    assert rc == 0 and state(slurm)["calls"] == [["show", "node", "n1"]]  # healthy, not drained: nothing to do
    set_state(slurm, "IDLE+DRAIN", "vllm-nodeagent: sysctl.vm.max_map_count")
    rc, out = run(h.root, capsys, "--slurm")
    assert rc == 0 and state(slurm)["state"] == "IDLE" and "resumed" in out
    assert state(slurm)["calls"][-1] == ["update", "nodename=n1", "state=resume"]
    set_state(slurm, "IDLE+DRAIN", "bad DIMM, ticket 123", by="alice")
    rc, out = run(h.root, capsys, "--slurm")
    assert state(slurm)["state"] == "IDLE+DRAIN" and state(slurm)["reason"] == "bad DIMM, ticket 123"
    assert [c[0] for c in state(slurm)["calls"]] == ["show"] and "left alone" in out


def test_another_drain_is_never_overwritten(tmp_path: Path, slurm: Path, capsys: pytest.CaptureFixture[str]) -> None:
    set_state(slurm, "MIXED+DRAIN", "maintenance window", by="admin")
    rc, _out = run(broken(tmp_path).root, capsys, "--slurm")
    assert rc == 1 and state(slurm)["reason"] == "maintenance window"
    assert [c[0] for c in state(slurm)["calls"]] == ["show"]


def test_own_drain_follows_the_current_failures(
    tmp_path: Path, slurm: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    set_state(slurm, "IDLE+DRAIN", "vllm-nodeagent: shm.size")
    h = broken(tmp_path)
    _rc, _ = run(h.root, capsys, "--slurm")
    st = state(slurm)
    assert st["reason"] != "vllm-nodeagent: shm.size" and "sysctl.vm.max_map_count" in st["reason"]
    st["calls"] = []
    slurm.write_text(json.dumps(st))
    _rc, _ = run(h.root, capsys, "--slurm")
    assert [c[0] for c in state(slurm)["calls"]] == ["show"]  # same reason: no update


def test_warn_drains_only_when_asked(tmp_path: Path, slurm: Path, capsys: pytest.CaptureFixture[str]) -> None:
    h = fixed(broken(tmp_path))
    config = SAMPLE + '"vm.no_such_knob" = 1\n'  # MISSING: a WARN
    rc, out = run(h.root, capsys, "--slurm", "--json", config=config)
    report = json.loads(out)
    assert rc == 0 and any(c["status"] == "warn" for c in report["checks"])
    assert report["slurm"]["action"] == "none" and state(slurm)["state"] == "IDLE"
    _rc, out = run(h.root, capsys, "--slurm", "--drain-on-warn", "--json", config=config)
    report = json.loads(out)
    assert report["slurm"]["action"] == "drain" and "vm.no_such_knob" in state(slurm)["reason"]


def test_scontrol_failure_is_one_line(
    tmp_path: Path, slurm: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    set_state(slurm, "IDLE", fail="slurm_load_node error: Unable to contact slurm controller (connect failure)")
    cfg = tmp_path / "c.toml"
    cfg.write_text(SAMPLE)
    cfg.chmod(0o600)
    h = broken(tmp_path)
    rc = cli.main(
        ["--root", str(h.root), "--config", str(cfg), "doctor", "--slurm", "--node", "n1"],
        nvml_opener=unavailable_opener,
        host_cls=SysfsHost,
    )  # type: ignore[arg-type]
    err = capsys.readouterr().err
    assert rc == 3
    assert err.count("\n") == 1 and "scontrol show node n1: slurm_load_node error" in err
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    rc = cli.main(
        ["--root", str(h.root), "--config", str(cfg), "doctor", "--slurm", "--node", "n1"],
        nvml_opener=unavailable_opener,
        host_cls=SysfsHost,
    )  # type: ignore[arg-type]
    err = capsys.readouterr().err
    assert rc == 3 and "scontrol: cannot run" in err and "Traceback" not in err


def test_prolog_runs_only_gpu_checks(tmp_path: Path, slurm: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = run(broken(tmp_path).root, capsys, "--slurm", "prolog", "--json")
    report = json.loads(out)
    assert all(not c["id"].startswith("sysctl.") for c in report["checks"])
    assert rc == 0 and report["slurm"]["action"] == "none"  # a host setting is the health check's business


def test_prolog_fail_never_resumes(tmp_path: Path, slurm: Path, capsys: pytest.CaptureFixture[str]) -> None:
    set_state(slurm, "IDLE+DRAIN", "vllm-nodeagent: sysctl.vm.max_map_count")
    run(broken(tmp_path).root, capsys, "--slurm", "epilog")
    assert state(slurm)["state"] == "IDLE+DRAIN"  # only the health check, which runs every check, resumes


def test_parse_node_and_reason() -> None:
    text = (
        "NodeName=n1 Arch=x86_64\n   State=DOWN+DRAIN+NOT_RESPONDING ThreadsPerCore=1\n"
        "   Reason=vllm-nodeagent: a,b [root@2026-12-02T06:00:00]\n"
    )
    node = parse_node(text, "n1")
    assert node.state == "DOWN+DRAIN+NOT_RESPONDING" and node.drained and node.ours
    assert node.reason == "vllm-nodeagent: a,b"
    assert not parse_node("NodeName=n1\n   State=IDLE ThreadsPerCore=1\n   Reason=(null)\n", "n1").drained
    ids = [f"sysctl.some.rather.long.setting_{i}" for i in range(20)]
    reason = make_reason("health", ids)
    assert len(reason) <= REASON_MAX and reason.endswith("more") and reason.startswith("vllm-nodeagent: sysctl")
    assert make_reason("epilog", ["gpu.leftover_memory"]) == "vllm-nodeagent: epilog: gpu.leftover_memory"
    checks = [CheckResult("a", Status.FAIL), CheckResult("b", "warn"), CheckResult("c", Status.PASS)]
    assert failing_ids(checks, False) == ["a"] and failing_ids(checks, True) == ["a", "b"]
    assert job_gpus({"SLURM_JOB_GPUS": "2,0"}) == [0, 2] and job_gpus({}) is None


def test_epilog_finds_what_the_job_left(
    hgx: FakeHost,
    hgx_nvml: NvmlDouble,
    slurm: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hgx_nvml.rec["devices"][1]["compute_processes"] = [[777, 20 * GIB]]
    hgx_nvml.rec["devices"][1]["memory"] = [80 * GIB, 20 * GIB]
    hgx_nvml.rec["devices"][5]["memory"] = [80 * GIB, 3 * GIB]  # memory held, no process visible
    cfg = hgx.root / "doctor.toml"
    cfg.write_text(SAMPLE)
    cfg.chmod(0o600)
    argv = ["--root", str(hgx.root), "--config", str(cfg), "doctor", "--slurm", "epilog", "--node", "n1", "--json"]

    def epilog(job_gpus: str) -> dict[str, Any]:
        monkeypatch.setenv("SLURM_JOB_GPUS", job_gpus)
        set_state(slurm, "MIXED")
        cli.main(argv, nvml_opener=opener_for(hgx_nvml), host_cls=SysfsHost)
        return {c["id"]: c for c in json.loads(capsys.readouterr().out)["checks"]}

    checks = epilog("0,1")  # the job had GPUs 0 and 1: GPU1 still runs pid 777
    assert checks["gpu.leftover_processes"]["status"] == "fail"
    assert checks["gpu.leftover_processes"]["current"] == "GPU1: pid(s) 777"
    assert state(slurm)["reason"] == "vllm-nodeagent: epilog: gpu.leftover_processes,gpu.leftover_memory"
    checks = epilog("4,5")
    assert checks["gpu.leftover_processes"]["status"] == "pass"
    assert checks["gpu.leftover_memory"]["current"] == "GPU5: 3.0 GiB used"
    checks = epilog("2,3")
    assert {c["status"] for c in checks.values()} == {"pass"} and state(slurm)["state"] == "MIXED"
