"""vllm.bytecode (issue 23): the count of importable .py without a valid cache file for the vLLM interpreter,
as the vLLM user sees its sys.path, and the compile step as the files' owner. Real interpreter (the system's
Python in a venv), real unprivileged user (nobody), real compileall; no fakes."""

from __future__ import annotations

import hashlib
import os
import pwd
import py_compile
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakehost import real_accounts

from vllm_nodeagent.config import parse_config
from vllm_nodeagent.host import Host
from vllm_nodeagent.serving import bytecode as bc
from vllm_nodeagent.settings import bytecode, engine, restore
from vllm_nodeagent.settings.checks import setting_checks
from vllm_nodeagent.settings.journal import Journal

SYSTEM_PY = "/usr/bin/python3"
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists(SYSTEM_PY), reason="needs root (to act as nobody) and /usr/bin/python3"
)
STATE = "/var/lib/vllm-nodeagent"


@pytest.fixture
def venv() -> Iterator[Path]:
    """A venv of the system Python (nobody can run it) with a package that has no bytecode, in a directory
    nobody can traverse (pytest's tmp_path is root's 0700)."""
    base = Path(tempfile.mkdtemp(prefix="vna-bytecode-", dir="/tmp"))
    base.chmod(0o755)
    subprocess.run([SYSTEM_PY, "-m", "venv", "--without-pip", str(base / "venv")], check=True)
    site = next((base / "venv" / "lib").glob("python3*/site-packages"))
    pkg = site / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("VERSION = '1.2.3'\n")
    for i in range(20):
        (pkg / f"m{i}.py").write_text(f"X = {i}\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def f():\n    return 2\n")
    (pkg / "py2_only.py").write_text('print "no"\n')  # does not compile: left, and counted
    (pkg / "data-files").mkdir()
    (pkg / "data-files" / "x.py").write_text("")  # not importable (a dash): not counted
    (site / "top.py").write_text("Y = 1\n")
    yield base
    shutil.rmtree(base)


def site_of(base: Path) -> Path:
    return next((base / "venv" / "lib").glob("python3*/site-packages"))


def make(tmp_path: Path, base: Path, extra: str = "", user: str = "nobody") -> tuple[Host, bytecode.Bytecode]:
    cfg = parse_config(
        f'[vllm]\ncommand = ["{base}/venv/bin/python", "-m", "vllm"]\nmodel = "m"\nuser = "{user}"\n{extra}', "c"
    )
    host = Host(tmp_path / "root")
    real_accounts(tmp_path / "root", "nobody")  # the tree's accounts: root and the machine's real nobody
    state = tmp_path / "root" / STATE.lstrip("/")
    state.mkdir(parents=True, exist_ok=True)
    state.chmod(0o755)
    assert cfg.vllm is not None
    return host, bytecode.Bytecode(host, cfg.vllm, STATE)


def hashes(top: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(top.rglob("*.py"))}


def pkg_missing(t: bytecode.Bytecode, base: Path) -> set[str]:
    env, who = t._environment()
    return {os.path.relpath(p, site_of(base)) for p in bc.scan(env, who).missing if p.startswith(str(base))}


def test_counts_what_lacks_bytecode_as_nobody_sees_it_and_warns(tmp_path: Path, venv: Path) -> None:
    _host, t = make(tmp_path, venv)
    env, _who = t._environment()
    assert str(site_of(venv)) in env.path and env.tag.startswith("cpython-")
    assert pkg_missing(t, venv) == {
        "top.py", "pkg/__init__.py", "pkg/py2_only.py", "pkg/sub/__init__.py", "pkg/sub/b.py",
        *(f"pkg/m{i}.py" for i in range(20)),
    }  # fmt: skip
    # a share above the threshold: doctor warns (not fail) with the fix, and says nobody cannot write them
    [check] = setting_checks([t])
    assert check.status == "warn" and check.hint.startswith("vllm-nodeagent apply --only vllm.bytecode")
    assert "nobody cannot write them" in check.detail


def test_apply_compiles_as_root_for_a_root_tree_same_code_then_remembers(tmp_path: Path, venv: Path) -> None:
    host, t = make(tmp_path, venv)
    before = hashes(venv)
    journal = Journal(host, STATE)
    with journal.locked():
        [o] = engine.apply([t], journal, log_results=False)
    assert o.status == engine.CHANGED, o
    assert o.previous is not None and o.current is not None
    assert int(o.previous.split()[0]) > int(o.current.split()[0])
    assert pkg_missing(t, venv) == {"pkg/py2_only.py"}  # what does not compile stays, and is counted
    pyc = Path(bc.cache_file(str(site_of(venv) / "pkg" / "m3.py"), t._environment()[0].tag))
    assert pyc.stat().st_uid == 0 and not pyc.stat().st_mode & 0o022
    assert hashes(venv) == before  # the same source: what vLLM runs is unchanged
    out = subprocess.run(
        [str(venv / "venv/bin/python"), "-c", "import pkg, pkg.sub.b; print(pkg.VERSION, pkg.sub.b.f())"],
        user="nobody", capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert out.stdout.split() == ["1.2.3", "2"]

    # unchanged environment: the next apply (the daemon's start) scans and compiles nothing
    _, again = make(tmp_path, venv)
    again_scan = bc.scan
    try:
        bc.scan = lambda *a: (_ for _ in ()).throw(AssertionError("scanned again"))  # type: ignore[assignment]
        with journal.locked():
            [o2] = engine.apply([again], journal, log_results=False)
    finally:
        bc.scan = again_scan
    assert o2.status == engine.OK and "unchanged since" in o2.message

    # the environment changes (a package installed): counted again
    (site_of(venv) / "newpkg-1.0.dist-info").mkdir()
    (site_of(venv) / "newmod.py").write_text("Z = 3\n")
    _, third = make(tmp_path, venv)
    assert "newmod.py" in pkg_missing(third, venv)

    # revert leaves the cache (it is one) and says so
    with journal.locked():
        [r] = restore.revert(host, journal, log_results=False)
    assert r.status == engine.UNTOUCHED and "a cache" in r.message and pyc.exists()


def test_user_owned_tree_is_compiled_as_that_user(tmp_path: Path, venv: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    for p in [site_of(venv) / "pkg", *(site_of(venv) / "pkg").rglob("*")]:
        os.chown(p, nobody.pw_uid, nobody.pw_gid)
    host, t = make(tmp_path, venv)
    journal = Journal(host, STATE)
    with journal.locked():
        engine.apply([t], journal, log_results=False)
    pyc = Path(bc.cache_file(str(site_of(venv) / "pkg" / "sub" / "b.py"), t._environment()[0].tag))
    assert pyc.stat().st_uid == nobody.pw_uid  # compiled by its owner, not by root


def test_root_never_writes_where_others_can(tmp_path: Path, venv: Path) -> None:
    (site_of(venv) / "pkg").chmod(0o777)  # root-owned but world-writable: another user could plant a link
    host, t = make(tmp_path, venv)
    journal = Journal(host, STATE)
    with journal.locked():
        [o] = engine.apply([t], journal, log_results=False)
    assert not (site_of(venv) / "pkg" / "__pycache__").exists()
    assert "pkg/m1.py" in pkg_missing(t, venv)
    assert not (site_of(venv) / "pkg" / "sub" / "__pycache__").exists()  # below it: "sub" could be swapped
    assert pkg_missing(t, venv) >= {"pkg/sub/b.py"} and "top.py" not in pkg_missing(t, venv)  # the rest compiled
    assert o.status == engine.FAILED  # not compliant after the step: doctor keeps warning
    _, doc = make(tmp_path, venv)
    [check] = setting_checks([doc])
    assert check.status == "warn" and "left alone" in check.detail and "root does not write there" in check.detail


def test_pythonpath_counts_and_root_user_runs_no_pth(tmp_path: Path, venv: Path) -> None:
    extra = venv / "extra"
    extra.mkdir()
    extra.chmod(0o755)
    (extra / "plugin.py").write_text("P = 1\n")
    marker = venv / "pth-ran"
    (site_of(venv) / "hook.pth").write_text(f"import os; open({str(marker)!r}, 'a').close()\n")
    (venv).chmod(0o777)  # so the .pth may leave its marker as nobody
    _, t = make(tmp_path, venv, extra=f'[vllm.env]\nPYTHONPATH = "{extra}"\n')
    env, _ = t._environment()
    assert str(extra) in env.path  # [vllm.env] PYTHONPATH, as the vLLM user sees it
    assert marker.exists() and marker.stat().st_uid == pwd.getpwnam("nobody").pw_uid  # site ran as nobody
    marker.unlink()
    _, as_root = make(tmp_path, venv, extra=f'[vllm.env]\nPYTHONPATH = "{extra}"\n', user="root")
    env_root, _ = as_root._environment()
    assert str(extra) in env_root.path and str(site_of(venv)) in env_root.path
    assert not marker.exists()  # with user = "root": -I -S, no site, no .pth: nothing of the environment ran


def test_validity_follows_the_interpreter_rules(tmp_path: Path, venv: Path) -> None:
    _, t = make(tmp_path, venv)
    env, _ = t._environment()
    src = site_of(venv) / "top.py"
    pyc = bc.cache_file(str(src), env.tag)
    subprocess.run([str(venv / "venv/bin/python"), "-I", "-S", "-m", "py_compile", str(src)], check=True)
    assert bc.cache_valid(str(src), src.stat(), env)
    os.utime(src, (src.stat().st_atime, src.stat().st_mtime + 10))  # edited later: the timestamp pyc is stale
    assert not bc.cache_valid(str(src), src.stat(), env)
    if env.magic == __import__("importlib.util").util.MAGIC_NUMBER:
        py_compile.compile(str(src), cfile=pyc, invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
        assert bc.cache_valid(str(src), src.stat(), env)
        src.write_text("Y = 2\n")
        assert not bc.cache_valid(str(src), src.stat(), env)
