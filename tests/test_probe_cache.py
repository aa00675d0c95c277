"""The probe cache (serving/probe_cache.py) against the real probe child over a fake ``vllm`` package whose
import appends to a counter file: a hit never runs the child; an upgraded install, changed args or another user
misses; a damaged, foreign-owned or world-writable cache is ignored."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
from test_launcher import fake_vllm_site

from vllm_nodeagent.config import VllmConfig
from vllm_nodeagent.serving import probe_cache
from vllm_nodeagent.serving.args import PROBE_FLAGS, ProbeResult, probe
from vllm_nodeagent.serving.env import RunAs
from vllm_nodeagent.serving.probe import probe_vllm


class Bed:
    def __init__(self, tmp_path: Path) -> None:
        self.site = Path(fake_vllm_site(tmp_path))
        self.counter = tmp_path / "imports"
        init = self.site / "vllm" / "__init__.py"
        init.write_text(init.read_text() + f"open({str(self.counter)!r}, 'a').write('x')\n")
        self.dist = self.site / "vllm-0.99.0.dist-info"
        self.dist.mkdir()
        (self.dist / "METADATA").write_text("Name: vllm\nVersion: 0.99.0\n")
        self.cache = tmp_path / "state"
        self.cache.mkdir(mode=0o700)
        self.env = {"PYTHONPATH": str(self.site), "PATH": os.environ.get("PATH", "")}
        self.me = RunAs("me", os.geteuid(), os.getegid(), [], str(tmp_path), switch=False)

    def probe(self, args: tuple[str, ...] = ("--port", "9000"), cache: str = "") -> ProbeResult:
        cfg = VllmConfig(command=[sys.executable, "-m", "vllm.entrypoints.openai.api_server"], args=list(args))
        return probe_vllm(cfg, self.me, self.env, cache or str(self.cache))

    def runs(self) -> int:
        return len(self.counter.read_text()) if self.counter.exists() else 0

    def cache_file(self) -> Path:
        return self.cache / probe_cache.CACHE_FILE


@pytest.fixture
def bed(tmp_path: Path) -> Bed:
    return Bed(tmp_path)


def test_second_probe_is_a_hit_and_runs_no_child(bed: Bed) -> None:
    first = bed.probe()
    assert first.available and not first.cached and bed.runs() == 1, first
    assert str(bed.dist) in first.install and str(bed.site / "vllm") in first.install
    assert os.path.realpath(sys.executable) in first.install
    assert (bed.cache_file().stat().st_mode & 0o777) == 0o600
    second = bed.probe()
    assert second.cached and bed.runs() == 1
    assert (second.version, second.accepts, second.parser, second.error) == (
        first.version,
        first.accepts,
        first.parser,
        first.error,
    )
    rejected = bed.probe(("--port", "9000", "--speculative-model", "x"))  # args changed: a miss
    assert not rejected.cached and "--speculative-model" in rejected.error and bed.runs() == 2
    assert bed.probe(("--port", "9000", "--speculative-model", "x")).error == rejected.error and bed.runs() == 2


def test_an_upgraded_install_misses(bed: Bed) -> None:
    bed.probe()
    # pip's upgrade: a new dist-info dir, the old one gone
    new = bed.site / "vllm-0.99.1.dist-info"
    shutil.copytree(bed.dist, new)
    shutil.rmtree(bed.dist)
    assert not bed.probe().cached and bed.runs() == 2
    assert bed.probe().cached and bed.runs() == 2
    # a reinstall of the same version: same name, another directory (the old one moved away first, so the
    # inode cannot be reused)
    old = bed.site / "old"
    new.rename(old)
    shutil.copytree(old, new)
    shutil.rmtree(old)
    assert not bed.probe().cached and bed.runs() == 3


def test_another_user_or_environment_misses(bed: Bed) -> None:
    def run() -> ProbeResult:
        return probe(sys.executable, ["--port", "1"], env=bed.env)

    inputs = probe_cache.probe_inputs(sys.executable, ["--port", "1"], PROBE_FLAGS, bed.env, os.geteuid())
    assert not probe_cache.cached_probe(str(bed.cache), inputs, run).cached and bed.runs() == 1
    assert probe_cache.cached_probe(str(bed.cache), inputs, run).cached and bed.runs() == 1
    other_user = dict(inputs, uid=inputs["uid"] + 1)
    hit, why = probe_cache.lookup(str(bed.cache), other_user)
    assert hit is None and why == "inputs changed: uid"
    assert not probe_cache.cached_probe(str(bed.cache), other_user, run).cached and bed.runs() == 2
    moved = probe_cache.probe_inputs(
        sys.executable, ["--port", "1"], PROBE_FLAGS, dict(bed.env, PYTHONPATH="/elsewhere"), other_user["uid"]
    )
    assert probe_cache.lookup(str(bed.cache), moved) == (None, "inputs changed: env")


@pytest.mark.parametrize(
    "damage", [b"", b"{not json", b'{"inputs": {}}', b'{"inputs": 1, "stamps": [], "result": 2}', b"\xff\xfe"]
)
def test_a_damaged_cache_file_is_a_miss(bed: Bed, damage: bytes) -> None:
    bed.probe()
    bed.cache_file().write_bytes(damage)
    hit, why = probe_cache.lookup(str(bed.cache), {})
    assert hit is None and "damaged" in why, why
    r = bed.probe()
    assert r.available and not r.cached and bed.runs() == 2
    assert bed.probe().cached and bed.runs() == 2  # rewritten whole


def test_a_world_writable_cache_file_or_dir_is_ignored(bed: Bed) -> None:
    bed.probe()
    bed.cache_file().chmod(0o666)
    assert not bed.probe().cached and bed.runs() == 2  # ignored, then replaced by a private one
    assert (bed.cache_file().stat().st_mode & 0o777) == 0o600 and bed.probe().cached
    bed.cache.chmod(0o777)
    assert not bed.probe().cached and bed.runs() == 3
    assert "writable" in probe_cache.store(str(bed.cache), {}, ProbeResult(True, install=[str(bed.dist)]))
    bed.cache.chmod(0o700)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_a_cache_file_owned_by_another_uid_is_ignored(bed: Bed) -> None:
    bed.probe()
    os.chown(bed.cache_file(), 65534, 65534)
    hit, why = probe_cache.lookup(str(bed.cache), {})
    assert hit is None and "not owned by" in why and "uid 65534" in why
    assert not bed.probe().cached and bed.runs() == 2
    assert bed.cache_file().stat().st_uid == 0 and bed.probe().cached


def test_a_symlinked_cache_file_is_not_followed(bed: Bed, tmp_path: Path) -> None:
    bed.probe()
    target = tmp_path / "elsewhere.json"
    bed.cache_file().rename(target)
    bed.cache_file().symlink_to(target)
    assert not bed.probe().cached and bed.runs() == 2
    assert not bed.cache_file().is_symlink()


def test_a_missing_state_dir_is_created_private_a_missing_parent_stores_nothing(bed: Bed, tmp_path: Path) -> None:
    """The first launch probes before anything created the state dir (seen on the H100): the answer is kept."""
    fresh = tmp_path / "missing"
    assert not bed.probe(cache=str(fresh)).cached
    assert (fresh.stat().st_mode & 0o777) == 0o700
    assert bed.probe(cache=str(fresh)).cached and bed.runs() == 1
    orphan = tmp_path / "no-parent" / "state"
    assert not bed.probe(cache=str(orphan)).cached
    assert not bed.probe(cache=str(orphan)).cached and bed.runs() == 3 and not orphan.parent.exists()


def test_a_failed_probe_stores_nothing(bed: Bed, tmp_path: Path) -> None:
    bed.env["PYTHONPATH"] = str(tmp_path / "empty")  # vllm not importable: not available, not remembered
    assert not bed.probe().available and not bed.cache_file().exists()
