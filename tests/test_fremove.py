"""host/fremove.empty_dir: a cache directory emptied by directory fds (issue 23.4). Links planted in the tree are
removed as names and never followed; a directory swapped for a link between its listing and its descent is never
entered; what lies outside the tree survives, byte for byte. The real-attacker races are test_hostile_fremove.py.

Every planted link points at a decoy directory inside tmp_path, never at a real system path: a regression that
followed links must cost a decoy, not the machine."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from vllm_nodeagent.host import HostError
from vllm_nodeagent.host.fremove import MAX_DEPTH, empty_dir
from vllm_nodeagent.host.trust import Refused

OUTSIDE = b"outside the cache: must survive\n"


def tree(tmp_path: Path) -> tuple[Path, Path]:
    """<tmp>/base (0755) holding cache/ (0700) with a torch-like nest, and the decoy <tmp>/outside with files."""
    base = tmp_path / "base"
    cache = base / "cache"
    (cache / "vllm" / "torch_compile_cache" / "ab12" / "rank_0_0").mkdir(parents=True)
    (cache / "vllm" / "torch_compile_cache" / "ab12" / "rank_0_0" / "cache_key").write_bytes(b"x" * 100)
    (cache / "triton" / "K").mkdir(parents=True)
    (cache / "triton" / "K" / "kernel.cubin").write_bytes(b"y" * 50)
    (cache / "compile-fingerprint.json").write_text("{}")
    base.chmod(0o755)
    cache.chmod(0o700)
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "file").write_bytes(OUTSIDE)
    (outside / "sub" / "deep").write_bytes(OUTSIDE)
    return cache, outside


def intact(outside: Path) -> None:
    assert (outside / "file").read_bytes() == OUTSIDE
    assert (outside / "sub" / "deep").read_bytes() == OUTSIDE


def test_everything_goes_but_the_kept_names_and_the_directory_itself(tmp_path: Path) -> None:
    cache, _ = tree(tmp_path)
    done = empty_dir("/", str(cache), keep=("compile-fingerprint.json",))
    assert sorted(os.listdir(cache)) == ["compile-fingerprint.json"]
    assert (done.files, done.dirs, done.bytes, done.left_count) == (2, 6, 150, 0)
    assert cache.is_dir() and (cache.stat().st_mode & 0o777) == 0o700
    assert empty_dir("/", str(cache)).files == 1  # without keep: the last file goes too
    assert os.listdir(cache) == []


def test_links_planted_in_the_tree_are_removed_as_names_never_followed(tmp_path: Path) -> None:
    cache, outside = tree(tmp_path)
    (cache / "to_file").symlink_to(outside / "file")
    (cache / "to_dir").symlink_to(outside)
    (cache / "triton" / "K" / "to_sub").symlink_to(outside / "sub")
    (cache / "dangling").symlink_to(tmp_path / "nothing")
    os.link(outside / "file", cache / "hardlink")  # a second name of an outside file: only this name goes
    os.mkfifo(cache / "fifo")  # unlinked, never opened (an open would block)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(cache / "sock"))
    sock.close()
    done = empty_dir("/", str(cache))
    assert os.listdir(cache) == [] and done.left_count == 0
    intact(outside)
    assert (outside / "file").stat().st_nlink == 1
    assert sorted(os.listdir(outside)) == ["file", "sub"]


def test_a_directory_swapped_for_a_link_before_its_descent_is_never_entered(tmp_path: Path) -> None:
    cache, outside = tree(tmp_path)
    swapped = []

    def swap(shown: str) -> None:  # the user's move between the listing (lstat: a directory) and the openat
        if shown.endswith("/triton") and not swapped:
            (cache / "triton").rename(cache / "triton.old")
            (cache / "triton").symlink_to(outside)
            swapped.append(shown)

    done = empty_dir("/", str(cache), _before_descent=swap)
    assert swapped
    intact(outside)
    assert not (cache / "triton").exists() and not (cache / "triton").is_symlink()  # the link itself went
    assert (cache / "triton.old" / "K" / "kernel.cubin").exists()  # renamed after the listing: next time
    assert done.left_count == 0
    empty_dir("/", str(cache))
    assert os.listdir(cache) == []


def test_a_directory_replaced_by_another_one_before_its_descent_is_left(tmp_path: Path) -> None:
    cache, outside = tree(tmp_path)

    def swap(shown: str) -> None:
        if shown.endswith("/vllm") and not (tmp_path / "moved").exists():
            (cache / "vllm").rename(tmp_path / "moved")
            (cache / "vllm").mkdir()
            (cache / "vllm" / "planted").write_bytes(b"z")

    done = empty_dir("/", str(cache), _before_descent=swap)
    assert done.left_count == 1 and "replaced while it was removed" in done.left[0]
    assert (cache / "vllm" / "planted").exists()
    intact(outside)


def test_the_directory_itself_a_link_is_refused_and_nothing_is_removed(tmp_path: Path) -> None:
    cache, outside = tree(tmp_path)
    link = cache.parent / "link"
    link.symlink_to(outside)
    with pytest.raises(Refused, match="symbolic link or not a directory"):
        empty_dir("/", str(link))
    intact(outside)
    with pytest.raises(HostError) as missing:
        empty_dir("/", str(cache.parent / "absent"))
    assert isinstance(missing.value.__cause__, FileNotFoundError)


def test_a_parent_others_can_write_is_refused(tmp_path: Path) -> None:
    cache, _ = tree(tmp_path)
    cache.parent.chmod(0o777)
    with pytest.raises(Refused, match="group- or world-writable"):
        empty_dir("/", str(cache))
    assert (cache / "triton" / "K" / "kernel.cubin").exists()


def test_under_a_root_the_path_is_the_trees(tmp_path: Path) -> None:
    cache, outside = tree(tmp_path)
    done = empty_dir(str(tmp_path), "/" + str(cache.relative_to(tmp_path)))
    assert os.listdir(cache) == [] and done.files == 3
    intact(outside)


def test_a_tree_deeper_than_the_limit_is_left_not_walked(tmp_path: Path) -> None:
    cache, _ = tree(tmp_path)
    deep = cache / "deep"
    for i in range(MAX_DEPTH + 2):
        deep = deep / str(i)
    deep.mkdir(parents=True)
    done = empty_dir("/", str(cache))
    assert done.left_count >= 1 and "levels: not entered" in done.summary()
    assert not (cache / "vllm").exists()
