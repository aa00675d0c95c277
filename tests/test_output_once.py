"""Output once (issue 26.5): results on stdout, stderr only warnings and errors, console lines by default even off
a terminal (JSON only when asked), NVML's absence said once, apply/revert end with a summary line, and a changed
floor never says "left as is"."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from fakehost import FakeHost, SysfsHost

from vllm_nodeagent import cli

REPO = Path(__file__).resolve().parent.parent


def child(*argv: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "vllm_nodeagent.cli", *argv], capture_output=True, text=True, env=env, cwd="/"
    )


def test_topology_says_nvml_is_missing_once_and_logs_console_off_a_tty(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("")
    cfg.chmod(0o600)
    r = child("--config", str(cfg), "topology")  # the real host: no GPU driver here, or one
    assert r.returncode == 0, r.stderr
    assert not any(line.startswith("{") for line in r.stderr.splitlines())  # not JSON off a TTY
    said = (r.stdout + r.stderr).count("NVML not used") + r.stderr.count("nvml_unavailable")
    assert said <= 1  # 0 where NVML works; never on stdout and stderr both


def test_json_logs_only_when_asked(hgx: FakeHost) -> None:
    hgx.accounts()  # root, from the tree's own /etc/passwd
    hgx.write("/sys/devices/system/node/node1/cpulist", "garbage")  # a warning: node 1 unreadable
    cfg = hgx.root.parent / "c.toml"
    cfg.write_text('[vllm]\nmodel = "org/m"\nnodes = [0]\nuser = "root"\n')
    cfg.chmod(0o600)
    for fmt, is_json in ((None, False), ("json", True)):
        argv = ["--root", str(hgx.root), "--config", str(cfg), "launch", "--dry-run"]
        r = child(*argv, *(["--log-format", fmt] if fmt else []))
        lines = [ln for ln in r.stderr.splitlines() if ln]
        assert lines, r.stderr
        assert all(ln.startswith("{") == is_json for ln in lines), r.stderr


CONSOLE_LINE = re.compile(r"^\S+Z \[(warning|error)\s*\] \S")


def test_launch_under_root_says_only_warnings_and_errors_once_in_the_chosen_format(hgx: FakeHost) -> None:
    """Issue 26.6: launch and launch --dry-run, run as the real CLI on a fake tree. stdout holds the result only (the
    plan; a failed start prints nothing there), stderr only warnings and errors in the chosen format, each once: NVML's
    absence under --root, the start's one error line, no info lines (vllm_started, daemon_started, ...)."""
    hgx.accounts()
    cfg = hgx.root.parent / "c.toml"  # /bin/false: no #! line (an info line today), exits at once without output
    cfg.write_text('[vllm]\nmodel = "org/m"\nuser = "root"\nnuma = "none"\ncommand = ["/bin/false"]\n')
    cfg.chmod(0o600)
    for fmt in (None, "json"):
        for command in (["launch", "--dry-run"], ["launch"]):
            r = child("--root", str(hgx.root), "--config", str(cfg), *(["--log-format", fmt] if fmt else []), *command)
            said = f"{fmt} {command}: {r.stdout}{r.stderr}"
            lines = [ln for ln in r.stderr.splitlines() if ln]
            if command == ["launch"]:
                assert r.returncode == 1 and r.stdout == "", said
                assert lines[-1].startswith("vllm-nodeagent: launch: ") and "ended before it was ready" in lines[-1]
                lines = lines[:-1]  # the one error line (plain, as every command's fault)
            else:
                assert r.returncode == 0 and r.stdout.startswith("/bin/false --model org/m"), said
            if fmt == "json":
                levels = [json.loads(ln)["level"] for ln in lines]
            else:
                levels = [m.group(1) for m in map(CONSOLE_LINE.match, lines) if m]
                assert len(levels) == len(lines), said  # every line a console log line
            assert levels and set(levels) <= {"warning", "error"}, said
            assert r.stderr.count("nvml_unavailable") == 1 and "NVML" not in r.stdout, said
            assert "vllm_started" not in said and "daemon_started" not in said, said


def run(root: Path, config: str, *args: str) -> tuple[int, str]:
    cfg = root.parent / "c.toml"
    cfg.write_text(config)
    cfg.chmod(0o600)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli.main(["--root", str(root), "--config", str(cfg), *args], host_cls=SysfsHost)
    return rc, out.getvalue()


def test_apply_and_revert_end_with_a_summary_and_never_changed_left_as_is(hgx: FakeHost) -> None:
    config = "[agent]\nstate_dir = '/var/lib/vna'\n[sysctl]\n'net.ipv4.tcp_rmem' = '4096 87380 134217728'\n"
    config += "'vm.max_map_count' = 262144\n'net.core.rmem_max' = 100\n"
    rc, out = run(hgx.root, config, "apply")
    lines = out.splitlines()
    assert rc == 0 and lines[-1] == "apply: 2 changed, 1 ok", out
    rmem = next(ln for ln in lines if "tcp_rmem" in ln)
    assert rmem.startswith("changed") and "left as is" not in rmem  # today: "(above the floor; left as is)"
    assert "fields above the floor kept" in rmem
    rc, out = run(hgx.root, config, "revert")
    assert rc == 0 and out.splitlines()[-1].startswith("revert: 2 restored"), out
