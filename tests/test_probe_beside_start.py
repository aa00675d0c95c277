"""The argument probe beside vLLM's start (issue #12 bench): when the launch plan does not need the probe's answer,
vLLM starts at once and the probe runs meanwhile; READY waits for it, and a rejection ends the start exactly as a
rejection before the start did (same one line, same exit code). A real daemon, the stand-in vLLM, a fake vLLM
package whose parser refuses ``--swap-space`` and whose import waits until the stand-in has started, so the probe
cannot answer before the start (with the probe before the start, the stand-in would never run)."""

# ruff: noqa: F811 - the tests take test_daemon's `bed` fixture, imported by name

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from test_daemon import REPO, Bed, bed, pid_alive, wait_until  # noqa: F401
from test_launcher import fake_vllm_site

# vLLM's parser as far as the bed's args go: it knows the stand-in's flags, not the removed --swap-space
BED_CLI_ARGS = """
def make_arg_parser(parser):
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--record")
    return parser
"""

WAITING_INIT = """
import os, time
__version__ = "0.99.0"
_deadline = time.monotonic() + 20.0  # the stand-in starts within this; if it never does, answer anyway
while not os.path.exists({record!r}) and time.monotonic() < _deadline:
    time.sleep(0.05)
open({marker!r}, "w").write("probed after the start" if os.path.exists({record!r}) else "probed first")
"""


def probe_waits_for_the_start(bed: Bed) -> tuple[str, Path]:
    """The fake vLLM site (PYTHONPATH for [vllm] env) and the file its import writes when the probe ran."""
    site = fake_vllm_site(bed.base, cli_args=BED_CLI_ARGS)
    marker = bed.base / "share" / "probe-order"
    (Path(site) / "vllm" / "__init__.py").write_text(
        textwrap.dedent(WAITING_INIT).format(record=str(bed.record), marker=str(marker))
    )
    return site, marker


def test_rejected_args_stop_the_started_vllm_and_fail_the_start(bed: Bed) -> None:
    site, marker = probe_waits_for_the_start(bed)
    bed.write_config(vllm={"env": {"PYTHONPATH": site}}, standin_args=["--swap-space", "4"])
    bed.start()
    assert bed.wait_exit() == 1
    assert marker.read_text() == "probed after the start"  # the probe ran beside vLLM, not before it
    server = bed.records()[0]
    assert not pid_alive(server["pid"])  # the started vLLM was stopped
    assert "READY=1" not in bed.notify.lines()
    failed = [e for e in bed.events() if e.get("event") == "vllm_start_failed"]
    assert failed and failed[0]["error"].startswith("vLLM 0.99.0 rejects [vllm] args: ")
    assert "--swap-space" in failed[0]["error"]
    # the answer is remembered: a second start does not import vLLM to be told again
    assert (bed.root / bed.state.lstrip("/") / "vllm-probe-cache.json").is_file()


def test_launch_prints_the_same_one_line_error(bed: Bed) -> None:
    site, marker = probe_waits_for_the_start(bed)
    bed.write_config(vllm={"env": {"PYTHONPATH": site}}, standin_args=["--swap-space", "4"])
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "vllm_nodeagent.cli",
            "--root",
            str(bed.root),
            "--config",
            str(bed.config),
            "--log-format",
            "json",
            "launch",
        ],
        env=dict(env, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(REPO),
    )
    assert r.returncode == 1
    assert marker.read_text() == "probed after the start"
    plain = [line for line in r.stderr.splitlines() if line.startswith("vllm-nodeagent: ")]
    assert len(plain) == 1 and "--swap-space" in plain[0]
    assert plain[0].startswith("vllm-nodeagent: launch: cannot start vLLM: vLLM 0.99.0 rejects [vllm] args: ")
    assert not pid_alive(bed.records()[0]["pid"])


def test_accepted_args_ready_only_after_the_probe_answered(bed: Bed) -> None:
    site, marker = probe_waits_for_the_start(bed)
    bed.write_config(vllm={"env": {"PYTHONPATH": site}})
    bed.start()
    bed.notify.wait_for("READY=1")
    names = [e.get("event") for e in bed.events()]
    assert names.index("vllm_args_ok") < names.index("ready")
    assert marker.read_text() == "probed after the start"
    bed.signal(signal.SIGTERM)
    assert bed.wait_exit() == 0
    wait_until(lambda: not pid_alive(bed.records()[0]["pid"]), "the stand-in gone")
