"""Accounts under ``--root`` come from the tree only (issue 26.8): a tree without /etc/passwd has no users even
where the machine has them (doctor and launch say so, naming the tree's file), and a tree with its own files
gives its own uid, gid and groups, never the machine's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fakehost import two_socket_8gpu

from vllm_nodeagent.host import Host
from vllm_nodeagent.host.accounts import Accounts
from vllm_nodeagent.serving.env import LaunchError, resolve_user

REPO = Path(__file__).resolve().parent.parent


def host_has(name: str) -> int:
    account = Accounts("/").user(name)
    if account is None:
        pytest.skip(f"the machine has no {name!r} account")
    return account.uid


def test_a_tree_without_passwd_has_no_users_though_the_machine_has_them(tmp_path: Path) -> None:
    host_has("root")
    host_has("nobody")
    accounts = Accounts.of(Host(tmp_path))
    assert accounts.users() == [] and accounts.user("root") is None
    said = accounts.unknown("nobody")
    assert said == f"{tmp_path}/etc/passwd does not exist (under --root the accounts are the tree's only)"
    with pytest.raises(LaunchError) as err:
        resolve_user("nobody", Host(tmp_path))
    line = str(err.value)
    assert line.startswith("[vllm] user 'nobody' does not exist: ") and f"{tmp_path}/etc/passwd does not exist" in line
    assert f"useradd --root {tmp_path} --system nobody" in line  # the fix acts on the tree, not the machine
    assert "\n" not in line


def test_a_tree_with_its_own_passwd_gives_its_uid_not_the_machine_s(tmp_path: Path) -> None:
    real = host_has("nobody")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:4242:4243::/srv/nobody:/bin/false\n")
    if real == 4242:
        pytest.skip("the machine's nobody has the tree's uid")
    who = resolve_user("nobody", Host(tmp_path))
    assert (who.uid, who.gid, who.home) == (4242, 4243, "/srv/nobody")
    # no /etc/group in the tree: the primary group only, never the machine's group memberships
    accounts = Accounts.of(Host(tmp_path))
    account = accounts.user("nobody")
    assert account is not None and accounts.group_ids(account) == [4243]
    (tmp_path / "etc/group").write_text("nogroup:x:4243:\nvideo:x:44:nobody\n")
    member = Accounts.of(Host(tmp_path)).member("nobody")
    assert member is not None and member.groups == frozenset({44, 4243})
    assert Accounts.of(Host(tmp_path)).user("nosuchuser") is None
    assert Accounts.of(Host(tmp_path)).unknown("nosuchuser") == f"not in {tmp_path}/etc/passwd"


def cli(root: Path, config: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "vllm_nodeagent.cli", "--root", str(root), "--config", str(config), *argv],
        capture_output=True, text=True, env=env, cwd="/", timeout=300, check=False,
    )  # fmt: skip


def test_doctor_and_launch_say_the_tree_has_no_passwd(tmp_path: Path) -> None:
    host_has("nobody")
    root = tmp_path / "root"
    two_socket_8gpu(root)
    cfg = tmp_path / "c.toml"
    cfg.write_text('[vllm]\nmodel = "/models/m"\nuser = "nobody"\n')
    cfg.chmod(0o600)
    missing = f"{root}/etc/passwd does not exist"
    r = cli(root, cfg, "launch", "--dry-run")
    assert r.returncode == 1, r.stdout + r.stderr
    assert (r.stdout + r.stderr).count(missing) == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    r = cli(root, cfg, "doctor", "--json")
    checks = {c["id"]: c for c in json.loads(r.stdout)["checks"]}
    user = checks["vllm.user"]
    assert user["status"] == "fail" and missing in json.dumps(user), user
