"""A launch fault reaches the operator once (issue 26.6): launch, launch --dry-run and serve on a fake root tree
whose config names a vLLM user that does not exist, run as the CLI in a new process; the fault's text appears
exactly once across stdout and stderr (launch: its one error line, not also an error log line before it).

serve's case once failed inside the full suite and passed alone: serve (and run) warm the serving stack in a thread
beside vLLM's start, and that warm-up resolved the vLLM user too and logged the same fault as a prewarm_error
whenever it got there before the start failed and ended the process (a loaded machine slowed the start). The keeper
now resolves the user before anything runs beside the start; the second test forces the old losing order.

The same for a program that is not there (issue 26, "output once"): a ``[vllm] command`` naming a missing binary, or
a missing interpreter as ``[vllm] python`` and the command, was said by the warm-up ("serving stack not warmed: no
vLLM interpreter (cannot read ...)") and then by the start (``vllm_start_failed``). The keeper now looks the program
up (on the PATH vLLM gets) before anything runs beside the start."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from fakehost import real_accounts, two_socket_8gpu

REPO = Path(__file__).resolve().parent.parent
SAMPLE = (REPO / "etc/config.toml").read_text()
FAULT = "[vllm] user 'nosuchuser' does not exist"

# serve with its start held until the warm-up beside it has resolved the stack (or 20 s passed: the warm-up does not
# run at all when the user is checked first): the order a loaded machine produced by chance, here every time.
SLOW_START = """\
import sys, threading
import vllm_nodeagent.daemon.prewarm_step as step
import vllm_nodeagent.daemon.serve_keeper as keeper
from vllm_nodeagent.cli import main
warmed = threading.Event()
stack, start_plan = step._stack, keeper.start_plan
def stack_then_say(*a, **k):
    try:
        return stack(*a, **k)
    finally:
        warmed.set()
def start_after_the_warm_up(*a, **k):
    warmed.wait(20)
    return start_plan(*a, **k)
step._stack, keeper.start_plan = stack_then_say, start_after_the_warm_up
sys.exit(main(sys.argv[1:]))
"""


def tree(tmp_path: Path, vllm: str = 'user = "nosuchuser"') -> tuple[Path, Path]:
    """A fake root and a config file: the sample's, with a model and ``vllm`` in place of its ``user`` line."""
    root = tmp_path / "root"
    two_socket_8gpu(root)
    real_accounts(root)  # root only: a user that exists, run as without switching
    text = SAMPLE.replace('model = ""', 'model = "/models/m"', 1).replace('user = "vllm"', vllm, 1)
    assert vllm in text and "overlap = true" in text and "stack = true" in text
    cfg = tmp_path / "config.toml"
    cfg.write_text(text)
    cfg.chmod(0o600)
    return root, cfg


def said_once(proc: subprocess.CompletedProcess[str], fault: str = FAULT) -> None:
    assert proc.returncode == 1, proc.stderr
    assert (proc.stdout + proc.stderr).count(fault) == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("command", [["launch", "--dry-run"], ["launch"], ["serve"]])
def test_a_launch_fault_is_said_once(tmp_path: Path, command: list[str]) -> None:
    root, cfg = tree(tmp_path)
    argv = [sys.executable, "-m", "vllm_nodeagent.cli", "--root", str(root), "--config", str(cfg), *command]
    said_once(subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False))


def test_serve_says_it_once_when_its_start_is_slower_than_the_warm_up_beside_it(tmp_path: Path) -> None:
    root, cfg = tree(tmp_path)
    argv = [sys.executable, "-c", SLOW_START, "--root", str(root), "--config", str(cfg), "serve"]
    said_once(subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, cwd=str(REPO)))


# (the config's [vllm] user line replaced by, the fault's text): the command's program missing; the interpreter
# missing, named as [vllm] python and run as the command (a module-style start).
NO_PROGRAM = [
    ('user = "root"\ncommand = ["/nonexistent/bin/vllm", "serve"]', "/nonexistent/bin/vllm"),
    (
        'user = "root"\npython = "/nonexistent/bin/python"\n'
        'command = ["/nonexistent/bin/python", "-m", "vllm.entrypoints.openai.api_server"]',
        "/nonexistent/bin/python",
    ),
]


def without_command_line(text: str) -> str:
    """The sample's own ``command = [...]`` line dropped (the replacement names the command)."""
    return "".join(ln for ln in text.splitlines(keepends=True) if ln != 'command = ["vllm", "serve"]\n')


def program_tree(tmp_path: Path, vllm: str) -> tuple[Path, Path]:
    root, cfg = tree(tmp_path, vllm)
    cfg.write_text(without_command_line(cfg.read_text()).replace('numa = "bind"', 'numa = "none"', 1))
    return root, cfg


@pytest.mark.parametrize(("vllm", "fault"), NO_PROGRAM, ids=["command", "python"])
@pytest.mark.parametrize("harness", ["cli", "start slower than the warm-up"])
def test_serve_says_a_missing_program_once(tmp_path: Path, vllm: str, fault: str, harness: str) -> None:
    """serve, as the CLI in a new process: the fault once (the start's ``vllm_start_failed``), exit 1 (a failed
    start, docs/daemon.md), no warm-up's ``prewarm_error`` before it, also when the start waits for the warm-up."""
    root, cfg = program_tree(tmp_path, vllm)
    head = ["-m", "vllm_nodeagent.cli"] if harness == "cli" else ["-c", SLOW_START]
    argv = [sys.executable, *head, "--root", str(root), "--config", str(cfg), "serve"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, cwd=str(REPO))
    said_once(proc, fault)
    assert "vllm_start_failed" in proc.stderr and "prewarm_error" not in proc.stderr, proc.stderr


@pytest.mark.parametrize(("vllm", "fault"), NO_PROGRAM, ids=["command", "python"])
def test_run_says_a_missing_program_once_as_a_fault(tmp_path: Path, vllm: str, fault: str) -> None:
    """run (settings on the tree, then the start): one warning or error line names the fault, the start's; the
    settings report before it names it once more at info level, as the reason vllm.bytecode was skipped."""
    root, cfg = program_tree(tmp_path, vllm)
    argv = [sys.executable, "-m", "vllm_nodeagent.cli", "--root", str(root), "--config", str(cfg), "run"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, cwd=str(REPO))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    lines = [json.loads(ln) for ln in proc.stderr.splitlines() if ln.startswith("{")]
    faults = [ln for ln in lines if ln["level"] in ("warning", "error") and fault in json.dumps(ln)]
    assert [ln["event"] for ln in faults] == ["vllm_start_failed"], proc.stderr
    assert [ln["id"] for ln in lines if ln["level"] == "info" and fault in json.dumps(ln)] == ["vllm.bytecode"]


@pytest.mark.parametrize(("vllm", "fault"), NO_PROGRAM, ids=["command", "python"])
def test_doctor_fails_a_missing_program(tmp_path: Path, vllm: str, fault: str) -> None:
    """A node whose [vllm] command cannot be exec'd cannot serve: doctor fails vllm.program naming the program (it
    only skipped vllm.args and vllm.bytecode before, and a node that could not start vLLM could pass)."""
    root, cfg = program_tree(tmp_path, vllm)
    argv = [sys.executable, "-m", "vllm_nodeagent.cli", "--root", str(root), "--config", str(cfg), "doctor", "--json"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, cwd=str(REPO))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    check = next(c for c in json.loads(proc.stdout)["checks"] if c["id"] == "vllm.program")
    assert check["status"] == "fail" and check["current"] == f"{fault}: No such file or directory", check
    assert check["fix"]["command"] is None and "[vllm] command" in check["fix"]["note"], check


def test_doctor_passes_a_program_on_the_vllm_path(tmp_path: Path) -> None:
    """The same lookup the start makes: a bare name resolves on the PATH vLLM gets ([vllm.env] PATH here)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    prog = bindir / "vllm"
    prog.write_text("#!/bin/sh\nexit 0\n")
    prog.chmod(0o755)
    root, cfg = program_tree(tmp_path, 'user = "root"\ncommand = ["vllm", "serve"]')
    text = cfg.read_text()
    assert text.count("[vllm.env]\n") == 1
    cfg.write_text(text.replace("[vllm.env]\n", f'[vllm.env]\nPATH = "{bindir}"\n'))
    argv = [sys.executable, "-m", "vllm_nodeagent.cli", "--root", str(root), "--config", str(cfg), "doctor", "--json"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, cwd=str(REPO))
    assert "Traceback" not in proc.stderr, proc.stderr
    check = next(c for c in json.loads(proc.stdout)["checks"] if c["id"] == "vllm.program")
    assert check == {**check, "status": "pass", "current": str(prog)}, check
