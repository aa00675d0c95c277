"""A launch fault reaches the operator once (issue 26.6): launch and launch --dry-run on a fake root tree
whose config names a vLLM user that does not exist, run as the CLI in a new process; the fault's text appears
exactly once across stdout and stderr (launch: its one error line, not also an error log line before it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from fakehost import two_socket_8gpu

SAMPLE = (Path(__file__).resolve().parent.parent / "etc/config.toml").read_text()
FAULT = "[vllm] user 'nosuchuser' does not exist"


@pytest.mark.parametrize("command", [["launch", "--dry-run"], ["launch"]])
def test_a_launch_fault_is_said_once(tmp_path: Path, command: list[str]) -> None:
    root = tmp_path / "root"
    two_socket_8gpu(root)
    text = SAMPLE.replace('model = ""', 'model = "/models/m"', 1).replace('user = "vllm"', 'user = "nosuchuser"', 1)
    assert 'user = "nosuchuser"' in text
    cfg = tmp_path / "config.toml"
    cfg.write_text(text)
    cfg.chmod(0o600)
    argv = [sys.executable, "-m", "vllm_nodeagent.cli", "--root", str(root), "--config", str(cfg), *command]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1, proc.stderr
    assert (proc.stdout + proc.stderr).count(FAULT) == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
