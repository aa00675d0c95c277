"""One-shot commands import only what they use (issue #18): an import-graph check, not a timing.

Each command runs in a new interpreter on the 2-socket / 8-GPU fixture (NVML replayed) and reports
``sys.modules`` at exit. The modules listed below cost start-up time and belong to the daemon or to another
command; a new import of one of them on doctor's path (a new doctor check, a module-level import) fails here.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from fakehost import two_socket_8gpu

from vllm_nodeagent import log

TESTS = Path(__file__).resolve().parent
SAMPLE = (TESTS.parent / "etc/config.toml").read_text()

# What none of doctor / topology / prewarm needs, and why it is heavy or belongs elsewhere.
NOT_ON_ONE_SHOT_PATH = {
    "asyncio": "pulled in by structlog; the daemon's log backend only",
    "ssl": "pulled in by structlog (via asyncio)",
    "structlog": "the daemon's log backend; one-shot commands render their few lines themselves",
    "logging": "nothing here uses stdlib logging",
    "prometheus_client": "not a dependency: daemon/metrics.py writes the textfile itself",
    "psutil": "not a dependency (tests only): host/proc.py reads /proc itself",
    "cpuinfo": "py-cpuinfo is not used on any path",
    "pynvml": "NVML is injected (the replayed double); nothing may import the real binding behind its back",
    "sdnotify": "systemd notify: the daemon only",
    "urllib.request": "health checks: the supervisor only",
    "http.client": "health checks: the supervisor only",
    "socket": "notify socket and health checks: the daemon only",
    "email": "pulled in by urllib.request / http.client",
    "concurrent.futures": "not used",
    "multiprocessing": "not used",
    "vllm_nodeagent.daemon": "the daemon",
    "vllm_nodeagent.serving.child": "the daemon",
    "vllm_nodeagent.daemon.metrics": "the daemon",
    "vllm_nodeagent.daemon.notify": "the daemon",
}
# prewarm legitimately needs its reader and residency (ctypes for cachestat/mincore); so does doctor's storage
# check once a configured model's files are present (the shards' residency) - never before.
PREWARM_ONLY = {
    "ctypes": "residency queries (cachestat/mincore): prewarm only",
    "vllm_nodeagent.prewarm": "prewarm only",
    "vllm_nodeagent.prewarm.residency": "prewarm only",
}

CHILD = """\
import json, sys
sys.path.insert(0, {tests!r})
from nvml_double import NvmlDouble, hgx_8gpu_recording
from vllm_nodeagent import cli
from vllm_nodeagent.nvml import Nvml
rc = cli.main(sys.argv[2:], nvml_opener=lambda: Nvml.open(lambda: NvmlDouble(hgx_8gpu_recording())))
with open(sys.argv[1], "w") as f:
    json.dump(sorted(sys.modules), f)
sys.exit(rc)
"""


def run_child(tmp_path: Path, *argv: str, model: str = "") -> tuple[subprocess.CompletedProcess[str], set[str]]:
    root = tmp_path / "root"
    if not root.exists():
        two_socket_8gpu(root)
    cfg = tmp_path / "config.toml"
    text = SAMPLE.replace("affinity = false", "affinity = true")
    cfg.write_text(text.replace('model = ""', f"model = {json.dumps(model)}", 1) if model else text)
    cfg.chmod(0o600)
    mods = tmp_path / "modules.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD.format(tests=str(TESTS)),
            str(mods),
            "--root",
            str(root),
            "--config",
            str(cfg),
            "--log-format",
            "json",
            *argv,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return proc, set(json.loads(mods.read_text()))


def heavy(modules: set[str], listed: dict[str, str]) -> dict[str, str]:
    return {m: why for m, why in listed.items() if m in modules}


def test_doctor_imports_only_what_it_uses(tmp_path: Path) -> None:
    proc, modules = run_child(tmp_path, "doctor", "--json")
    report = json.loads(proc.stdout)
    ids = {c["id"] for c in report["checks"]}
    # the whole audit ran: settings, GPUs over NVML, IRQ affinity, the vLLM launch checks
    assert any(i.startswith("sysctl.") for i in ids) and any(i.startswith("vllm.") for i in ids)
    assert any(i.startswith("irq.") for i in ids) and any("persistence" in i for i in ids), sorted(ids)
    assert "Traceback" not in proc.stderr
    assert heavy(modules, {**NOT_ON_ONE_SHOT_PATH, **PREWARM_ONLY}) == {}


def test_doctor_imports_residency_only_when_the_model_is_there(tmp_path: Path) -> None:
    """The storage check's shard residency needs ctypes (cachestat/mincore): imported only once a configured
    model's files are found, so doctor without a model, or before the download, stays light."""
    _, modules = run_child(tmp_path, "doctor", "--json", model="org/not-downloaded")
    assert heavy(modules, {**NOT_ON_ONE_SHOT_PATH, **PREWARM_ONLY}) == {}
    model = tmp_path / "root/models/m"
    model.mkdir(parents=True)
    (model / "model.safetensors").write_bytes(b"\0" * 4096)
    proc, modules = run_child(tmp_path, "doctor", "--json", model="/models/m")
    (got,) = [c for c in json.loads(proc.stdout)["checks"] if c["id"] == "storage.model_residency"]
    assert got["status"] in ("pass", "warn") and "of 1 weight file(s)" in got["current"]
    assert {"ctypes", "vllm_nodeagent.prewarm.residency"} <= modules
    assert heavy(modules, NOT_ON_ONE_SHOT_PATH) == {}


def test_topology_imports_only_what_it_uses(tmp_path: Path) -> None:
    proc, modules = run_child(tmp_path, "topology", "--json")
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)["gpus"]) == 8
    assert heavy(modules, {**NOT_ON_ONE_SHOT_PATH, **PREWARM_ONLY}) == {}


def test_prewarm_imports_only_what_it_uses_and_logs_no_info(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"\0" * (1 << 20))
    proc, modules = run_child(tmp_path, "prewarm", "--json", "--budget", "1G", str(model))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["files"] == 1
    # The summary is the result on stdout; stderr carries only warnings and errors (issue 26.5)
    assert "prewarm.done" not in proc.stderr and '"level": "info"' not in proc.stderr
    assert heavy(modules, NOT_ON_ONE_SHOT_PATH) == {}


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_one_shot_log_lines_match_the_daemons_structlog_lines(fmt: str) -> None:
    lines = {}
    for structured in (True, False):
        out = io.StringIO()
        log.configure(fmt, stream=out, structured=structured)
        logger = log.get()
        logger.debug("hidden", x=1)  # below the default level: nothing written
        logger.warning("prewarm.budget", skipped_files=2, path="/m n", ratio=0.5, errs=["a"], none=None)
        lines[structured] = out.getvalue()
    log.configure("auto")
    assert lines[True].count("\n") == lines[False].count("\n") == 1
    if fmt == "json":
        daemon, one_shot = json.loads(lines[True]), json.loads(lines[False])
        assert daemon.pop("timestamp")[:4] == one_shot.pop("timestamp")[:4]
        assert list(daemon.items()) == list(one_shot.items())  # same keys, values and order
    else:  # "<timestamp> [warning  ] prewarm.budget   errs=['a'] ..." — equal after the timestamp
        assert lines[True].split(" ", 1)[1] == lines[False].split(" ", 1)[1]
        assert "path='/m n'" in lines[False]
