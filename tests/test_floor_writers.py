"""The agent's own writers on the ground floor (issue 22), against a real unprivileged user: the metrics textfile,
the cache dir of the vLLM user, the pid and plan files, the journal lock. Root only (nobody is the other uid)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_fsafe import NOBODY, SECRET, as_root, start_planter

from vllm_nodeagent.daemon.metrics import Metrics
from vllm_nodeagent.host import Host
from vllm_nodeagent.serving.env import LaunchError, RunAs, prepare_cache_dir
from vllm_nodeagent.serving.state import write_pid_file


@pytest.fixture
def base() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="vna-writers-", dir="/tmp"))
    d.chmod(0o711)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def secret(base: Path) -> Path:
    p = base / "secret"
    p.write_bytes(SECRET)
    p.chmod(0o600)
    return p


@as_root
def test_the_metrics_textfile_in_a_dir_nobody_owns_never_reaches_the_secret(
    base: Path, secret: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """The finding: prometheus_client's <file>.<pid>.<tid> planted as a link made root overwrite the secret."""
    d = base / "textfile"
    d.mkdir(mode=0o755)
    os.chown(d, NOBODY, NOBODY)
    m = Metrics(str(d / "vllm_nodeagent.prom"))
    # The planter guesses the old temp name from this pid and this thread: start it from the writing thread.
    planter = start_planter(d, secret, "vllm_nodeagent.prom", 3.0)
    assert threading.get_ident() == threading.main_thread().ident
    deadline = time.monotonic() + 2.5
    n = 0
    while time.monotonic() < deadline or n < 200:
        m.set_up(n % 2 == 0)
        m.write(force=True)
        n += 1
    planter.wait(10)
    assert secret.read_bytes() == SECRET
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    warned = [line for line in capsys.readouterr().err.splitlines() if "metrics_write_failed" in line]
    assert len(warned) == 1 and "refusing" in warned[0] and "uid 65534 (nobody)" in warned[0]


def test_the_metrics_textfile_is_written_0644_with_no_temp_left(tmp_path: Path) -> None:
    m = Metrics(str(tmp_path / "m.prom"))
    m.set_up(True)
    m.write(force=True)
    assert "vllm_nodeagent" in (tmp_path / "m.prom").read_text()
    assert stat.S_IMODE((tmp_path / "m.prom").stat().st_mode) == 0o644 and os.listdir(tmp_path) == ["m.prom"]


def user(name: str = "nobody") -> RunAs:
    return RunAs(name, NOBODY, NOBODY, [NOBODY], "/nonexistent", switch=True)


@as_root
@pytest.mark.parametrize("shape", ["1777", "owned by the vLLM user"])
def test_a_cache_base_others_can_write_is_refused_with_one_line(base: Path, shape: str) -> None:
    cache = base / "cache"
    cache.mkdir(mode=0o755)
    if shape == "1777":
        cache.chmod(0o1777)
    else:
        os.chown(cache, NOBODY, NOBODY)
    with pytest.raises(LaunchError) as exc:
        prepare_cache_dir(Host("/"), str(cache), user())
    line = str(exc.value)
    assert "\n" not in line and f"{cache} (owner" in line and "[agent] cache_dir" in line
    assert not (cache / "nobody").exists()


@as_root
def test_the_cache_leaf_is_made_and_fixed_by_fd_and_a_link_there_refused(base: Path, secret: Path) -> None:
    cache = base / "cache"
    cache.mkdir(mode=0o755)
    leaf = prepare_cache_dir(Host("/"), str(cache), user())
    st = os.stat(leaf)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (NOBODY, 0o700)
    os.chmod(leaf, 0o750)  # noqa: S103 (a wrong mode the agent must fix)
    prepare_cache_dir(Host("/"), str(cache), user())
    assert stat.S_IMODE(os.stat(leaf).st_mode) == 0o700  # fixed
    os.rmdir(leaf)
    os.symlink(secret, leaf)
    with pytest.raises(LaunchError, match="symbolic link"):
        prepare_cache_dir(Host("/"), str(cache), user())
    assert (secret.stat().st_uid, stat.S_IMODE(secret.stat().st_mode)) == (0, 0o600)


@as_root
def test_pid_file_in_a_dir_nobody_owns_is_not_written(base: Path) -> None:
    d = base / "run"
    d.mkdir(mode=0o755)
    os.chown(d, NOBODY, NOBODY)
    with pytest.raises(OSError, match="not owned by root"):
        write_pid_file(str(d / "vllm.pid"), 1234)
    assert os.listdir(d) == []


@as_root
def test_apply_with_a_symlinked_lock_refuses_and_leaves_the_target(base: Path, secret: Path) -> None:
    root = base / "root"
    state = root / "var/lib/vllm-nodeagent"
    state.mkdir(parents=True, mode=0o700)
    (state / "lock").symlink_to(secret)
    r = subprocess.run(
        [sys.executable, "-m", "vllm_nodeagent.cli", "--root", str(root), "apply"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )  # fmt: skip
    assert r.returncode == 3, r.stderr
    assert secret.read_bytes() == SECRET
    last = r.stderr.strip().splitlines()[-1]
    assert "refusing" in last and "symbolic link" in last and "Traceback" not in r.stderr


@as_root
def test_launch_with_a_world_writable_cache_base_exits_3_with_one_line(tmp_path: Path) -> None:
    from test_launcher import run_cli

    base = tmp_path / "root/var/cache/vna"
    base.mkdir(parents=True)
    base.chmod(0o1777)
    conf = (
        '[agent]\ncache_dir = "/var/cache/vna"\n'
        f'[vllm]\ncommand = ["{sys.executable}", "-m", "vllm.entrypoints.openai.api_server"]\n'
        'model = "org/m"\nuser = "nobody"\n'
    )
    r = run_cli(["launch"], tmp_path, conf)
    assert r.returncode == 3, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "refusing a group- or world-writable" in last and "mode 1777" in last and "Traceback" not in r.stderr
    assert not (base / "nobody").exists()


@as_root
def test_launch_under_root_takes_the_user_from_the_root_s_passwd(tmp_path: Path) -> None:
    """Issue 26.8 / 22: under --root the accounts are the root's; the machine has no user "svc-vna"."""
    from test_launcher import run_cli

    etc = tmp_path / "root/etc"
    etc.mkdir(parents=True)
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\nsvc-vna:x:4242:4243::/srv/svc-vna:/bin/false\n")
    (etc / "group").write_text("svc-vna:x:4243:\nvideo:x:44:svc-vna\n")
    conf = (
        f'[vllm]\ncommand = ["{sys.executable}", "-m", "vllm.entrypoints.openai.api_server"]\n'
        'model = "org/m"\nnuma = "none"\nuser = "svc-vna"\n'
    )
    r = run_cli(["launch", "--dry-run", "--json"], tmp_path, conf)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["user"] == "svc-vna" and out["env"]["USER"] == "svc-vna"
    (etc / "passwd").chmod(0o666)  # others could add themselves: refused, one line
    r = run_cli(["launch", "--dry-run", "--json"], tmp_path, conf)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "refusing a group- or world-writable account file" in r.stderr.strip().splitlines()[-1]
