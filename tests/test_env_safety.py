"""[vllm] values that steer code or split a command line (issue 22): control characters are a config error
naming the key; `launch --dry-run` quotes argv; doctor FAILs [vllm.env] code paths (PYTHONPATH, LD_PRELOAD,
LD_LIBRARY_PATH) into directories someone other than root and the vLLM user can change — real directories,
real owners (nobody), real symlinks."""

from __future__ import annotations

import json
import os
import pwd
import shlex
import shutil
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_launcher import run_cli

from vllm_nodeagent.config import ConfigError, VllmConfig, parse_config
from vllm_nodeagent.host import Host
from vllm_nodeagent.serving.env_paths import env_path_checks

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="chown to nobody needs root")


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ('args = ["--port", "8000\\n--api-key x"]', "vllm.args[1]"),
        ('health_url = "http://127.0.0.1:8000/health\\r\\nX: y"', "vllm.health_url"),
        ('model = "org/m\\u001b[2J"', "vllm.model"),
        ('command = ["vllm\\tserve"]', "vllm.command[0]"),
        ('env = { HF_HOME = "/srv/hf\\nLD_PRELOAD=/tmp/x.so" }', "vllm.env.HF_HOME"),
        ('args = ["--x\\u2028y"]', "vllm.args[0]"),
    ],
)
def test_control_characters_are_a_config_error_naming_the_key(line: str, key: str) -> None:
    with pytest.raises(ConfigError) as got:
        parse_config(f"[vllm]\n{line}\n", "/etc/vllm-nodeagent/config.toml")
    msg = str(got.value)
    assert f" {key} = " in msg and "control character" in msg and "\n" not in msg, msg


def test_dry_run_quotes_argv_so_a_copied_line_never_splits(tmp_path: Path) -> None:
    conf = textwrap.dedent(f"""
        [vllm]
        command = ["{sys.executable}", "-m", "vllm.entrypoints.openai.api_server"]
        model = "org/m"
        args = ["--chat-template", "{{{{ a b }}}}; rm -rf /", "--served-model-name", "it's"]
        nodes = [0]
        user = "root"
        """)
    r = run_cli(["launch", "--dry-run"], tmp_path, conf)
    assert r.returncode == 0, r.stderr
    first = r.stdout.splitlines()[0]
    argv = shlex.split(first)
    assert argv[-4:] == ["--chat-template", "{{ a b }}; rm -rf /", "--served-model-name", "it's"]


@pytest.fixture
def base() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="vna-envpath-"))  # under /tmp: sticky and root's, like a real host
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def check(env: dict[str, str], vllm_uid: int = 998) -> dict[str, object]:
    got = env_path_checks(Host("/"), VllmConfig(model="m", env=env), vllm_uid)
    assert len(got) == 1
    return got[0].to_json()


def test_a_root_only_path_passes(base: Path) -> None:
    lib = base / "lib"
    lib.mkdir()
    assert check({"LD_LIBRARY_PATH": f"{lib}:/usr/lib"})["status"] == "pass"


@pytest.mark.parametrize("key", ["PYTHONPATH", "LD_LIBRARY_PATH", "LD_PRELOAD"])
def test_a_world_writable_dir_fails_naming_key_and_path(base: Path, key: str) -> None:
    shared = base / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    target = shared / ("x.so" if key == "LD_PRELOAD" else "site")
    got = check({key: str(target)})
    assert got["status"] == "fail" and f"[vllm] env {key}" in str(got["hint"]), got
    assert f"{shared} is writable by others (mode 0777)" in str(got["hint"])


def test_a_missing_entry_in_a_sticky_dir_fails(base: Path) -> None:
    """/tmp is 1777 root: anyone may create /tmp/<name> before vLLM starts."""
    got = check({"PYTHONPATH": f"/tmp/{base.name}-not-yet"})
    assert got["status"] == "fail" and "lets anyone create it" in str(got["hint"]), got


def test_relative_and_empty_entries_fail() -> None:
    got = check({"PYTHONPATH": "/usr/lib/python3/dist-packages::site"})
    assert got["status"] == "fail"
    assert "(empty): a relative entry" in str(got["hint"]) and "site: a relative entry" in str(got["hint"])


@ROOT_ONLY
def test_a_dir_owned_by_another_user_fails_but_the_vllm_users_own_passes(base: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    theirs = base / "theirs"
    theirs.mkdir()
    os.chown(theirs, nobody.pw_uid, nobody.pw_gid)
    got = check({"PYTHONPATH": str(theirs)})
    assert got["status"] == "fail" and f"is owned by uid {nobody.pw_uid}" in str(got["hint"]), got
    assert check({"PYTHONPATH": str(theirs)}, vllm_uid=nobody.pw_uid)["status"] == "pass"


def test_a_symlink_into_a_writable_dir_fails(base: Path) -> None:
    shared = base / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    (base / "lib").symlink_to(shared)
    got = check({"LD_LIBRARY_PATH": str(base / "lib")})
    assert got["status"] == "fail" and f"{shared} is writable by others" in str(got["hint"]), got


def test_doctor_fails_a_writable_pythonpath_under_root(tmp_path: Path) -> None:
    shared = tmp_path / "root/srv/shared"  # under --root: the rule reads the fake tree
    shared.mkdir(parents=True)
    shared.chmod(0o777)
    conf = textwrap.dedent(f"""
        [vllm]
        command = ["{sys.executable}", "-c", ""]
        model = "org/m"
        user = "root"
        env = {{ PYTHONPATH = "/srv/shared/site" }}
        """)
    r = run_cli(["doctor", "--json"], tmp_path, conf)
    assert r.returncode in (0, 1), r.stderr
    checks = {c["id"]: c for c in json.loads(r.stdout)["checks"]}
    got = checks["vllm.env.PYTHONPATH"]
    assert got["status"] == "fail" and "/srv/shared is writable by others (mode 0777)" in got["hint"], got
