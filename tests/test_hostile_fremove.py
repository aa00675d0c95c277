"""Red team, the compile cache (issue 23.4): root empties ``[agent] cache_dir/<user>``, a tree the vLLM user owns and
changes while root works. The user plants links to root's files and directories and, in a loop running beside
root, swaps a directory of its cache for a link to a root-only directory (the classic rm -rf race). host/fremove
walks by fds: root's files survive every round.

Every link points at the decoy root-only directory this test makes (``<base>/secret``), never at a real system
path: if a regression ever followed a link, it must cost the decoy, not the machine. Root only (the attacker must
be another uid); skipped otherwise."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostile_user import as_user, attacker_user

from vllm_nodeagent.host.fremove import empty_dir
from vllm_nodeagent.host.trust import Refused

SECRET = b"root-only\n"
ROUNDS = 300


@pytest.fixture
def base() -> Iterator[Path]:
    """Root's 0755 base (the cache_dir) and, beside the cache, the decoy: a root-only directory with files."""
    d = Path(tempfile.mkdtemp(prefix="vna-fremove-", dir="/tmp"))
    d.chmod(0o755)
    secret = d / "secret"
    (secret / "inner").mkdir(parents=True)
    for p in (secret / "key", secret / "inner" / "key"):
        p.write_bytes(SECRET)
        p.chmod(0o600)
    secret.chmod(0o700)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def secret_intact(base: Path) -> None:
    secret = base / "secret"
    assert sorted(os.listdir(secret)) == ["inner", "key"]
    assert (secret / "key").read_bytes() == SECRET and (secret / "inner" / "key").read_bytes() == SECRET


def leaf_of(base: Path, uid: int, gid: int) -> Path:
    leaf = base / "atk"
    leaf.mkdir(mode=0o700)
    os.chown(leaf, uid, gid)
    return leaf


def test_links_the_user_planted_to_roots_files_are_removed_never_followed(base: Path) -> None:
    with attacker_user() as atk:
        leaf = leaf_of(base, atk.pw_uid, atk.pw_gid)
        secret = base / "secret"
        as_user(
            atk,
            ["sh", "-c", f"cd {leaf} && mkdir -p torchinductor/fx && echo c > torchinductor/fx/g.py && "
             f"ln -s {secret} vllm && ln -s {secret}/key key && ln -s {secret}/inner torchinductor/fx/up"],
        )  # fmt: skip
        done = empty_dir("/", str(leaf), frozenset({atk.pw_uid}))
        assert os.listdir(leaf) == [] and done.left_count == 0 and done.files == 4
        secret_intact(base)


def test_a_directory_swapped_for_a_link_in_a_loop_beside_root_never_empties_roots(base: Path) -> None:
    """The user's loop renames its directory away and puts a link to the decoy in its place, over and over, while
    root empties the cache ROUNDS times (no timing: the loop runs until root's rounds are done)."""
    with attacker_user() as atk:
        leaf = leaf_of(base, atk.pw_uid, atk.pw_gid)
        secret = base / "secret"
        stop = base / "stop"
        loop = (
            f"cd {leaf} || exit 1; while [ ! -e {stop} ]; do mkdir -p d/e 2>/dev/null; : > d/e/f 2>/dev/null; "
            f"mv -T d x 2>/dev/null; ln -sfn {secret} d 2>/dev/null; rm -rf x 2>/dev/null; rm -f d; done"
        )
        planter = subprocess.Popen(
            ["sh", "-c", loop], user=atk.pw_uid, group=atk.pw_gid, extra_groups=[], cwd="/",
            env={"PATH": "/usr/bin:/bin"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            removed = 0
            for _ in range(ROUNDS):
                done = empty_dir("/", str(leaf), frozenset({atk.pw_uid}))
                removed += done.files + done.dirs
                secret_intact(base)
        finally:
            stop.touch()
            planter.wait(timeout=60)
        assert removed > 0  # root met the user's tree, not an empty directory each round
        secret_intact(base)


def test_the_cache_directory_itself_a_link_is_refused(base: Path) -> None:
    """The leaf's own name is in root's base, which the user cannot write; a link root finds there is refused."""
    with attacker_user() as atk:
        (base / "atk").symlink_to(base / "secret")
        with pytest.raises(Refused):
            empty_dir("/", str(base / "atk"), frozenset({atk.pw_uid}))
        secret_intact(base)


def test_a_cache_directory_of_another_owner_is_refused(base: Path) -> None:
    with attacker_user() as atk:
        leaf = leaf_of(base, atk.pw_uid, atk.pw_gid)
        (leaf / "f").write_bytes(b"x")
        with pytest.raises(Refused, match="not owned by"):
            empty_dir("/", str(leaf), frozenset({atk.pw_uid + 1}))
        assert (leaf / "f").exists()
