"""Readiness check 2 (model storage for the service user) on fake trees."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from checkhelp import GIB, probe, results, user
from fakehost import FakeHost

from vllm_nodeagent.checks.base import CheckResult
from vllm_nodeagent.checks.storage import fs_class, may_write, mount_of, parse_mountinfo
from vllm_nodeagent.host.accounts import Account

MOUNTINFO = (
    "22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw\n"
    "30 22 0:40 / /models rw,relatime shared:5 - nfs4 filer:/export/models rw,vers=4.2\n"
    "31 22 0:41 / /mnt/s3\\040bucket rw - fuse.s3fs s3fs rw\n"
    "32 22 0:42 / /var/lib/vllm-nodeagent/hf rw - xfs /dev/nvme1n1 rw\n"
)
ACCT = Account("vllm", 998, 998, "/var/lib/vllm", frozenset({998, 44}))


def model_cfg(model: str, env: str = "") -> str:
    return f"[vllm]\nmodel = '{model}'\nuser = 'vllm'\n[vllm.env]\n{env}"


def test_mountinfo_parser_and_longest_prefix() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert ("/mnt/s3 bucket", "fuse.s3fs", "s3fs") in mounts
    assert mount_of(mounts, "/models/llama/x.safetensors") == ("/models", "nfs4", "filer:/export/models")
    assert mount_of(mounts, "/modelsX/a") == ("/", "ext4", "/dev/nvme0n1p2")  # a prefix is not a parent
    assert [fs_class(t) for t in ("nfs4", "fuse.s3fs", "overlay", "xfs", "fuseblk")] == [
        "network",
        "fuse",
        "overlay",
        "local",
        "fuse",
    ]


def test_model_on_nfs_warns_with_prewarm_advice(hgx: FakeHost) -> None:
    hgx.write("/proc/self/mountinfo", MOUNTINFO)
    hgx.write("/models/llama/model-00001.safetensors", "x" * 4096)
    r = results(probe(hgx, model_cfg("/models/llama")), "storage")["storage.model_fs"]
    assert r.status == "warn" and r.current == "/models/llama on /models (nfs4, filer:/export/models)"
    assert "prewarm" in r.hint


def test_hf_model_on_local_disk_passes_and_sizes_each_blob_once(hgx: FakeHost) -> None:
    hgx.write("/proc/self/mountinfo", MOUNTINFO)
    repo = "/var/lib/vllm-nodeagent/hf/hub/models--org--m"
    hgx.write(f"{repo}/refs/main", "abc")
    hgx.write(f"{repo}/blobs/b1", "w" * 3000)
    hgx.write(f"{repo}/blobs/b0", "old")
    for snap in ("abc", "old"):  # an older revision's snapshot does not count
        hgx.link(f"{repo}/snapshots/{snap}/model.safetensors", "../../blobs/b1" if snap == "abc" else "../../blobs/b0")
    hgx.link(f"{repo}/snapshots/abc/alias.safetensors", "../../blobs/b1")
    p = probe(hgx, model_cfg("org/m", "HF_HOME = '/var/lib/vllm-nodeagent/hf'\n"))
    got = results(p, "storage")
    assert got["storage.model_fs"].status == "pass"
    assert got["storage.model_fs"].current == f"{repo} on /var/lib/vllm-nodeagent/hf (xfs, /dev/nvme1n1)"
    assert got["storage.model_memory"].status == "pass"
    from vllm_nodeagent.checks.storage import weights_size

    assert weights_size(p, repo) == 3001  # 3000 bytes + newline the fake writer adds, once


@pytest.mark.parametrize(
    ("env", "repo"),
    [
        ("XDG_CACHE_HOME = '~/xdg'\n", "/var/lib/vllm/xdg/huggingface/hub/models--org--m"),
        ("HUGGINGFACE_HUB_CACHE = '/srv/hub'\n", "/srv/hub/models--org--m"),
    ],
    ids=["xdg", "legacy"],
)
def test_doctor_finds_an_hf_model_where_prewarm_does(hgx: FakeHost, env: str, repo: str) -> None:
    """The hub cache by prewarm's one precedence (targets.hf_cache_dir): XDG_CACHE_HOME and the legacy
    HUGGINGFACE_HUB_CACHE count too (doctor read only HF_HUB_CACHE and HF_HOME: 'no weight files found locally')."""
    user(hgx)
    hgx.write(f"{repo}/refs/main", "abc")
    hgx.write(f"{repo}/blobs/b1", "w" * 3000)
    hgx.link(f"{repo}/snapshots/abc/model.safetensors", "../../blobs/b1")
    got = results(probe(hgx, model_cfg("org/m", env)), "storage")
    assert got["storage.model_memory"].status == "pass", got["storage.model_memory"]
    assert got["storage.model_fs"].current is not None and got["storage.model_fs"].current.startswith(repo)


def test_model_bigger_than_memavailable_warns(hgx: FakeHost) -> None:
    hgx.meminfo(64, 1)  # kB: 1 KiB available
    hgx.write("/models/llama/model.safetensors", "x" * 8192)
    r = results(probe(hgx, model_cfg("/models/llama")), "storage")["storage.model_memory"]
    assert r.status == "warn" and r.current is not None and "MemAvailable 0.0 GiB" in r.current


def test_missing_model_skips_memory_and_reports_where_it_will_go(hgx: FakeHost) -> None:
    hgx.write("/proc/self/mountinfo", MOUNTINFO)
    got = results(probe(hgx, model_cfg("org/absent", "HF_HOME = '/var/lib/vllm-nodeagent/hf'\n")), "storage")
    assert got["storage.model_memory"].status == "skip"
    assert got["storage.model_fs"].status == "pass" and "not downloaded yet" in got["storage.model_fs"].detail


def test_storage_skips_without_a_model(hgx: FakeHost) -> None:
    assert [r.status for r in results(probe(hgx), "storage").values()] == ["skip"]


def test_free_space(hgx: FakeHost) -> None:
    hgx.write("/models/llama/model.safetensors", "x")
    low = probe(hgx, model_cfg("/models/llama"), space=lambda p: (100 * GIB, 2 * GIB))
    assert results(low, "storage")["storage.free_space"].status == "warn"
    assert results(probe(hgx, model_cfg("/models/llama")), "storage")["storage.free_space"].status == "pass"


@pytest.mark.parametrize(
    ("uid", "gid", "mode", "ok"),
    [
        (998, 0, 0o700, True),
        (0, 998, 0o770, True),
        (0, 44, 0o770, True),  # owner, primary and supplementary group
        (0, 0, 0o755, False),
        (0, 0, 0o1777, True),
        (998, 0, 0o500, False),
        (0, 0, 0o775, False),
    ],
)
def test_mode_bits(uid: int, gid: int, mode: int, ok: bool) -> None:
    assert may_write(uid, gid, mode, ACCT) is ok


def test_cache_dirs_writable_by_the_service_user(hgx: FakeHost) -> None:
    user(hgx, uid=998, home="/var/lib/vllm")
    home = hgx.root / "var/lib/vllm"
    home.mkdir(parents=True)
    os.chown(home, 998, 998)
    (hgx.root / "tmp").mkdir()
    (hgx.root / "tmp").chmod(0o1777)
    hf = hgx.root / "var/lib/vllm-nodeagent/hf"
    hf.mkdir(parents=True)  # root-owned 0755: the sample config's HF_HOME, not writable by vllm
    cfg = model_cfg("org/m", "HF_HOME = '/var/lib/vllm-nodeagent/hf'\n")
    got = results(probe(hgx, cfg), "storage")
    assert got["storage.writable.vllm_cache_root"].status == "pass"
    assert "would be created in /var/lib/vllm" in (got["storage.writable.vllm_cache_root"].current or "")
    assert got["storage.writable.torchinductor_cache_dir"].status == "pass"  # /tmp is 1777
    r = got["storage.writable.hf_home"]
    assert r.status == "fail" and r.current == "/var/lib/vllm-nodeagent/hf (exists: owner 0:0 mode 755)"
    assert "install -d -o vllm" in r.hint
    os.chown(hf, 998, 998)
    assert results(probe(hgx, cfg), "storage")["storage.writable.hf_home"].status == "pass"
    # a stale inductor cache left by another user (a root test run) blocks vllm's compile
    stale = hgx.root / "tmp/torchinductor_vllm"
    stale.mkdir()
    stale.chmod(0o755)
    assert results(probe(hgx, cfg), "storage")["storage.writable.torchinductor_cache_dir"].status == "fail"


def test_unsearchable_parent_fails(hgx: FakeHost) -> None:
    user(hgx, uid=998, home="/home/vllm")
    (hgx.root / "home/vllm").mkdir(parents=True)
    os.chown(hgx.root / "home/vllm", 998, 998)
    (hgx.root / "home").chmod(0o700)
    r = results(probe(hgx, model_cfg("/m")), "storage")["storage.writable.vllm_cache_root"]
    assert r.status == "fail" and "cannot enter /home" in (r.current or "")


# -- residency of the shards (real files in the fake tree, the real kernel's page cache) -------------------------
MIB = 1 << 20


def shard(path: Path, size: int) -> Path:
    """A weight file on disk (tmp_path is ext4 here, not tmpfs) with its pages written back, so they can drop."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(os.urandom(size))
        f.flush()
        os.fsync(f.fileno())
    return path


def drop_pages(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def hf_model(hgx: FakeHost) -> tuple[Path, Path]:
    """org/m in the service user's HF cache: two 8 MiB shards (blobs behind snapshot links) and a config."""
    repo = hgx.root / "var/lib/vllm-nodeagent/hf/hub/models--org--m"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs/main").write_text("abc")
    a, b = shard(repo / "blobs/aaa", 8 * MIB), shard(repo / "blobs/bbb", 8 * MIB)
    snap = repo / "snapshots/abc"
    snap.mkdir(parents=True)
    (snap / "model-00001-of-00002.safetensors").symlink_to("../../blobs/aaa")
    (snap / "model-00002-of-00002.safetensors").symlink_to("../../blobs/bbb")
    (snap / "config.json").write_text("{}")  # not a weight file: not counted
    return a, b


def residency(hgx: FakeHost, model: str = "org/m") -> CheckResult:
    cfg = model_cfg(model, "HF_HOME = '/var/lib/vllm-nodeagent/hf'\n")
    return results(probe(hgx, cfg), "storage")["storage.model_residency"]


def test_residency_falls_when_a_shard_is_dropped_and_rises_when_it_is_read(hgx: FakeHost) -> None:
    a, b = hf_model(hgx)
    for p in (a, b):
        p.read_bytes()
    r = residency(hgx)
    assert r.status == "pass" and r.current is not None
    assert r.current.startswith("100.0% of 2 weight file(s) resident (0.0 of 0.0 GiB")
    drop_pages(b)  # the real kernel drops one shard's clean pages
    r = residency(hgx)
    assert r.status == "warn" and r.hint == "vllm-nodeagent prewarm org/m"
    assert r.current is not None and r.current.startswith("50.0% of 2 weight file(s)")
    drop_pages(a)
    assert (residency(hgx).current or "").startswith("0.0% of 2")
    b.read_bytes()  # reading it brings it back
    r = residency(hgx)
    assert r.status == "warn" and (r.current or "").startswith("50.0% of 2")
    a.read_bytes()
    assert residency(hgx).status == "pass"


def test_residency_of_a_local_model_directory_counts_only_weights(hgx: FakeHost) -> None:
    w = shard(hgx.root / "models/llama/model.safetensors", 4 * MIB)
    shard(hgx.root / "models/llama/tokenizer.json", 4 * MIB)  # cold, but not weights
    drop_pages(hgx.root / "models/llama/tokenizer.json")
    w.read_bytes()
    r = results(probe(hgx, model_cfg("/models/llama")), "storage")["storage.model_residency"]
    assert r.status == "pass" and (r.current or "").startswith("100.0% of 1 weight file(s)")


def test_residency_skips_without_the_model_or_weights(hgx: FakeHost) -> None:
    assert residency(hgx, "org/absent").status == "skip"
    repo = hgx.root / "var/lib/vllm-nodeagent/hf/hub/models--org--broken"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs/main").write_text("gone")  # a ref to a snapshot that is not there: one line, no traceback
    r = residency(hgx, "org/broken")
    assert r.status == "skip" and "snapshot" in r.detail and "is missing" in r.detail
    (hgx.root / "models/empty").mkdir(parents=True)
    r = results(probe(hgx, model_cfg("/models/empty")), "storage")["storage.model_residency"]
    assert r.status == "skip" and r.detail == "no weight files found locally"


def test_residency_the_kernel_hides_is_skipped_not_reported_resident(
    hgx: FakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Doctor runs as root; run as a user who neither owns nor may write the shards, mincore/cachestat answer
    "all cached" whatever the truth (docs/prewarm.md): the check says it cannot tell instead of passing."""
    a, b = hf_model(hgx)
    drop_pages(a)
    drop_pages(b)
    real_access = os.access
    monkeypatch.setattr(os, "geteuid", lambda: a.stat().st_uid + 1000)
    monkeypatch.setattr(os, "access", lambda path, mode: False if mode == os.W_OK else real_access(path, mode))
    r = residency(hgx)
    assert r.status == "skip" and r.hint == "run doctor as root" and "hides" in r.detail
