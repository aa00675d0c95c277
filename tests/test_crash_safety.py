"""Kill `apply` (SIGKILL) before each of its host writes in turn; `revert` must always restore everything."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fakehost import FakeHost

REPO = Path(__file__).resolve().parent.parent
CONFIG = """
[agent]
state_dir = "/var/lib/vllm-nodeagent"
[sysctl]
"vm.max_map_count" = 262144
"net.core.rmem_max" = 134217728
"net.ipv4.tcp_rmem" = "4096 87380 134217728"
[cpu]
governor = "performance"
[irq]
irqbalance = "ignore"
affinity = true
"""

# Loaded by the child interpreter only: counts the syscalls a crash can interrupt and dies before the Nth.
SITECUSTOMIZE = """
import os, signal
_n = [0]
_kill_at = int(os.environ["CRASH_AT"])
def _wrap(fn):
    def step(*a, **k):
        _n[0] += 1
        if _n[0] == _kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return fn(*a, **k)
    return step
os.write, os.fsync, os.replace = _wrap(os.write), _wrap(os.fsync), _wrap(os.replace)
"""


def small_host(root: Path) -> FakeHost:
    """Two nodes, one GPU and one NIC each, 4 cpufreq policies: every kind of write, few steps."""
    h = FakeHost(root)
    h.cpus(4)
    h.numa_node(0, [0, 1], 1024)
    h.numa_node(1, [2, 3], 1024)
    h.gpu("0000:17:00.0", 0, [0, 1], irqs=(40, 41))
    h.gpu("0000:65:00.0", 1, [2, 3], irqs=(50,))
    h.cpufreq(4, "powersave")
    h.default_sysctls()
    return h


def snapshot(root: Path) -> dict[str, bytes]:
    # Kernel attributes read back with a trailing newline whatever was written: compare without it.
    return {
        str(p.relative_to(root)): p.read_bytes().rstrip(b"\n")
        for p in root.rglob("*")
        if p.is_file() and not p.is_symlink() and "var/lib" not in str(p) and p.name != "cfg.toml"
    }


def agent(root: Path, cfg: Path, *args: str, crash_at: int = 0, hook: Path | None = None) -> int:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hook) if crash_at else "", str(REPO)]))
    env["CRASH_AT"] = str(crash_at)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "vllm_nodeagent.cli",
            "--root",
            str(root),
            "--config",
            str(cfg),
            "--log-format",
            "json",
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return proc.returncode


def test_kill_at_every_step_then_revert(tmp_path: Path) -> None:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    crashed_at: list[int] = []
    step = 1
    while True:
        root = tmp_path / f"r{step}"
        h = small_host(root)
        cfg = root / "cfg.toml"
        cfg.write_text(CONFIG)
        cfg.chmod(0o600)
        original = snapshot(root)
        rc = agent(root, cfg, "apply", crash_at=step, hook=hook)
        if rc == 0:
            break  # apply ran to the end: every earlier step has been a crash point
        assert rc == -9, f"step {step}: apply exited {rc}, expected SIGKILL"
        crashed_at.append(step)
        # After a crash an operator may re-apply before reverting: the journal must keep the true originals.
        if step % 2 == 0:
            assert agent(root, cfg, "apply") == 0
            assert snapshot(root) != original
        assert agent(root, cfg, "revert") == 0, f"revert failed after a crash at step {step}"
        assert snapshot(root) == original, f"host not restored after a crash at step {step}"
        assert not (h.root / "var/lib/vllm-nodeagent/originals.json").exists()
        step += 1
        assert step < 400, "apply never completed"
    # 3 sysctls, the governor, 2 IRQ sets: each journaled (write, fsync, replace, dir fsync) then written
    assert len(crashed_at) >= 6 * 5
