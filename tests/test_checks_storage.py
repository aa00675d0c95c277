"""Readiness check 2 (model storage for the service user) on fake trees."""

from __future__ import annotations

import os

import pytest
from checkhelp import GIB, probe, results, user
from fakehost import FakeHost

from vllm_nodeagent.checks.base import Account
from vllm_nodeagent.checks.storage import fs_class, may_write, mount_of, parse_mountinfo

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
    assert [fs_class(t) for t in ("nfs4", "fuse.s3fs", "overlay", "xfs", "fuseblk")] == \
        ["network", "fuse", "overlay", "local", "fuse"]


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


@pytest.mark.parametrize(("uid", "gid", "mode", "ok"), [
    (998, 0, 0o700, True), (0, 998, 0o770, True), (0, 44, 0o770, True),  # owner, primary and supplementary group
    (0, 0, 0o755, False), (0, 0, 0o1777, True), (998, 0, 0o500, False), (0, 0, 0o775, False),
])
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
