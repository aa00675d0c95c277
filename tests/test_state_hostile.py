"""The pid and plan files are hostile input (issue 22): in the split layout they lie in the vLLM user's runtime
dir. Doctor reads them with real symlinks, real owners (``nobody``), real processes of another user and files
that would crash or hang a naive reader; each one is one WARN line of ``vllm.binding``, never a traceback or
exit 4, and a live pid that is not the recorded vLLM is not audited."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from checkhelp import live_vllm
from fakehost import FakeHost

from vllm_nodeagent import cli
from vllm_nodeagent.config import AgentConfig, Config, VllmConfig
from vllm_nodeagent.context import Context
from vllm_nodeagent.host import Host
from vllm_nodeagent.host.proc import Procfs
from vllm_nodeagent.serving import checks as serving_checks
from vllm_nodeagent.serving.env import RunAs
from vllm_nodeagent.serving.plan import plan
from vllm_nodeagent.topology import NumaNode, Topology

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="owners and other users' processes need root")


def binding(state_dir: Path, user: str = "root") -> dict[str, str]:
    vcfg = VllmConfig(model="m", user=user, command=[sys.executable, "-c", ""], nodes=[0])
    ctx = Context(Host("/"), Config(path="t", agent=AgentConfig(state_dir=str(state_dir)), vllm=vcfg), None, "json")
    topo = Topology([NumaNode(0, sorted(os.sched_getaffinity(0)), 1)], [], [], [])
    checks = {c.id: c.to_json() for c in serving_checks.doctor_checks(ctx, topo)}
    return checks["vllm.binding"]


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


def plan_json(pid: int, uid: int, start_time: int) -> str:
    p = plan(
        VllmConfig(model="m", nodes=[0]),
        Topology([NumaNode(0, [0], 1)], [], [], []),
        numactl="/bin/numactl",
        run_as=RunAs("root", uid, uid, [], "/", False),
    )
    data = dict(p.to_json(), pid=pid, start_time=start_time)
    data.pop("env")
    return json.dumps(data)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ('{"pid": PID}', "field 'argv' missing"),
        ("[" * 100_000 + "]" * 100_000, "nested deeper"),
        ('{"pid": PID, "argv": "x"}', "missing"),
        ("PLAN_WITH_BAD_TYPE", "field 'cpus' is not list[int]"),
        ("PLAN_WITH_BOOL_PID", "field 'pid' is not int"),
        ('{"pid": PID, "argv": [], "extra": 1' + "}", "missing"),
        ("\xff\xfe not json", "not JSON"),
    ],
    # short ids: a 200,000-character id lands in PYTEST_CURRENT_TEST and the sleeper's exec fails with E2BIG
    ids=["no-argv", "nested-100k", "argv-str", "bad-cpus", "bool-pid", "extra-key", "not-json"],
)
def test_a_malformed_plan_is_one_warn_line(
    tmp_path: Path, sleeper: subprocess.Popen[bytes], content: str, words: str
) -> None:
    good = json.loads(plan_json(sleeper.pid, os.getuid(), 0))
    if content == "PLAN_WITH_BAD_TYPE":
        content = json.dumps(dict(good, cpus=["0"]))
    elif content == "PLAN_WITH_BOOL_PID":
        content = json.dumps(dict(good, pid=True))
    (tmp_path / "vllm.pid").write_text(f"{sleeper.pid}\n")
    (tmp_path / "vllm-plan.json").write_text(content.replace("PID", str(sleeper.pid)))
    got = binding(tmp_path)
    assert got["status"] == "warn" and words in got["hint"], got
    assert "\n" not in got["hint"] and "vllm-plan.json" in got["hint"]


def test_a_100_mb_plan_is_refused_unread(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    (tmp_path / "vllm.pid").write_text(f"{sleeper.pid}\n")
    with open(tmp_path / "vllm-plan.json", "wb") as fh:
        fh.truncate(100 * 1024 * 1024)
    got = binding(tmp_path)
    assert got["status"] == "warn" and "104857600 bytes, more than" in got["hint"], got


def test_a_fifo_plan_does_not_hang_doctor(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    (tmp_path / "vllm.pid").write_text(f"{sleeper.pid}\n")
    os.mkfifo(tmp_path / "vllm-plan.json")
    got = binding(tmp_path)
    assert got["status"] == "warn" and "not a regular file" in got["hint"], got


@pytest.mark.parametrize("name", ["vllm.pid", "vllm-plan.json"])
def test_a_symlinked_state_file_is_refused_without_its_content(
    tmp_path: Path, sleeper: subprocess.Popen[bytes], name: str
) -> None:
    secret = tmp_path / "secret"
    secret.write_text(f"{sleeper.pid}\n" if name == "vllm.pid" else plan_json(sleeper.pid, os.getuid(), 0))
    secret.chmod(0o600)
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    if name == "vllm-plan.json":
        (state_dir / "vllm.pid").write_text(f"{sleeper.pid}\n")
    (state_dir / name).symlink_to(secret)
    got = binding(state_dir)
    assert got["status"] == "warn" and "symbolic link" in got["hint"], got
    assert "argv" not in json.dumps(got)


@pytest.mark.parametrize("content", ["12abc", "-5", "99999999999", "1 2", ""])
def test_a_pid_file_without_one_pid_is_one_warn_line(tmp_path: Path, content: str) -> None:
    (tmp_path / "vllm.pid").write_text(content)
    got = binding(tmp_path)
    assert got["status"] == "warn" and "does not hold one process id" in got["hint"], got


@ROOT_ONLY
def test_a_state_file_of_another_user_is_refused(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    nobody = pwd.getpwnam("nobody")
    (tmp_path / "vllm.pid").write_text(f"{sleeper.pid}\n")
    os.chown(tmp_path / "vllm.pid", nobody.pw_uid, nobody.pw_gid)  # vLLM runs as root here: nobody is a stranger
    got = binding(tmp_path)
    assert got["status"] == "warn" and f"owned by uid {nobody.pw_uid}" in got["hint"], got


@ROOT_ONLY
def test_a_live_pid_of_another_user_is_not_audited(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    """The vLLM user is nobody; the pid file (nobody may write it in the split layout) names root's process."""
    nobody = pwd.getpwnam("nobody")
    (tmp_path / "vllm.pid").write_text(f"{sleeper.pid}\n")
    os.chown(tmp_path / "vllm.pid", nobody.pw_uid, nobody.pw_gid)
    got = binding(tmp_path, user="nobody")
    assert got["status"] == "warn", got
    assert f"pid {sleeper.pid} runs as uid 0, not as the vLLM user (uid {nobody.pw_uid})" in got["hint"]


def test_a_reused_pid_is_not_audited(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    """The plan recorded the vLLM's start time; a later process with its pid started at another tick."""
    started = Procfs().stat(sleeper.pid).start_time
    (tmp_path / "vllm.pid").write_text(f"{sleeper.pid}\n")
    (tmp_path / "vllm-plan.json").write_text(plan_json(sleeper.pid, os.getuid(), started - 1))
    got = binding(tmp_path)
    assert got["status"] == "warn" and "a stale pid file" in got["hint"], got
    (tmp_path / "vllm-plan.json").write_text(plan_json(sleeper.pid, os.getuid(), started))
    assert binding(tmp_path)["status"] in ("pass", "fail")  # the recorded one: audited


@pytest.mark.parametrize(
    "plan_text",
    ['{"pid": 4242}', "[" * 50_000 + "]" * 50_000, '{"pid": 4242, "cpus": {"a": [[[]]]}}'],
    ids=["pid-only", "nested-50k", "nested-cpus"],
)
def test_doctor_exits_0_or_1_on_hostile_plan_files(
    hgx: FakeHost, capsys: pytest.CaptureFixture[str], plan_text: str
) -> None:
    """The CLI end to end under --root: was exit 4 (TypeError: LaunchPlan.__init__() missing 10 arguments,
    RecursionError); now one warn line and the rest of the audit."""
    pid = os.getpid()  # alive in the real /proc too: the old reader looked there
    live_vllm(hgx, pid, uid=os.getuid())
    hgx.write("/var/lib/vllm-nodeagent/vllm-plan.json", plan_text.replace("4242", str(pid)))
    cfg = hgx.root.parent / "doctor.toml"
    cfg.write_text(f"[vllm]\nmodel = 'm'\nuser = 'root'\ncommand = [{json.dumps(sys.executable)}, '-c', '']\n")
    cfg.chmod(0o600)
    rc = cli.main(["--root", str(hgx.root), "--config", str(cfg), "doctor", "--json"])
    out = capsys.readouterr()
    assert rc in (0, 1), out.err
    checks = {c["id"]: c for c in json.loads(out.out)["checks"]}
    assert checks["vllm.binding"]["status"] == "warn" and "vllm-plan.json" in checks["vllm.binding"]["hint"]
    assert "Traceback" not in out.err
