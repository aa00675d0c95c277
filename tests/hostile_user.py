"""A real unprivileged user for the hostile tests: created for one test, removed after it (skips without root)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


@contextmanager
def attacker_user(prefix: str = "vnaatk") -> Iterator[pwd.struct_passwd]:
    if os.geteuid() != 0 or not shutil.which("useradd"):
        pytest.skip("needs root and useradd (a real unprivileged user)")
    name = f"{prefix}{os.getpid() % 100000}"
    subprocess.run(["userdel", "-r", name], capture_output=True, check=False)
    subprocess.run(["useradd", "-m", "-s", "/bin/sh", name], check=True, capture_output=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", "-r", "-f", name], capture_output=True, check=False)


def as_user(user: pwd.struct_passwd, argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as the attacker (what it can do, it does itself: no root help)."""
    return subprocess.run(
        argv, user=user.pw_uid, group=user.pw_gid, extra_groups=[], capture_output=True, text=True, check=True,
        cwd=user.pw_dir, env={"PATH": "/usr/bin:/bin", "HOME": user.pw_dir},
    )  # fmt: skip
