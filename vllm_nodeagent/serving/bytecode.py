"""Bytecode of the vLLM environment: which importable ``.py`` files lack a valid cache file for the vLLM
interpreter, and compiling them with that interpreter's own ``compileall`` as the files' owner (issue 23).

Why: a ``.py`` without a valid ``__pycache__/<name>.<tag>.pyc`` that the vLLM user cannot write is compiled again
in memory at *every* start, by the API server and by the EngineCore (measured on an H200 image: 5,610 such files,
a warm restart 46.5 s -> 27.0 s after one compileall).

Safety:
- the interpreter's ``sys.path`` is what the vLLM user sees (``[vllm] env`` PYTHONPATH included, ``.pth`` files
  applied): it is asked *as that user*, never as root. Only a configured ``user = "root"`` is asked with
  ``-I -S`` (no site, no ``.pth``: nothing of the environment runs) plus sysconfig's site dirs and PYTHONPATH;
- compiling runs ``python -I -S -m compileall``: stdlib only, it reads and compiles source, it imports none;
- each directory is compiled by its owner: a user-owned tree as that user (dropped before exec), a root-owned
  one as root only when neither it, its ``__pycache__`` nor any ancestor (sticky ones aside) can be written by
  anyone else. Anything else is left and counted;
- an owner runs the interpreter only when nobody else can change it (host.untrusted.interpreter_unsafe: the
  executable, its directories, its ``pyvenv.cfg``): a venv in the vLLM user's home is never run by root.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Optional

from vllm_nodeagent.host import paths as hpaths
from vllm_nodeagent.host import subp
from vllm_nodeagent.host.untrusted import interpreter_unsafe
from vllm_nodeagent.serving.env import SAFE_PATH, RunAs, popen_user_kwargs

# Runs in the vLLM interpreter (as the vLLM user, or with -I -S for root): stdlib only, one JSON line.
_INFO = r"""
import importlib.util, json, os, sys, sysconfig
path = list(sys.path)
if sys.flags.no_site:
    extra = [p for p in sys.argv[1:] if p]
    venv = os.path.dirname(os.path.dirname(os.path.abspath(sys.executable)))
    if os.path.isfile(os.path.join(venv, "pyvenv.cfg")):  # a venv: without site, sys.prefix is not it (3.11)
        for lib in ("lib", "lib64"):
            extra.append(os.path.join(venv, lib, "python%d.%d" % sys.version_info[:2], "site-packages"))
    else:
        extra += [sysconfig.get_paths()[key] for key in ("purelib", "platlib")]
    path = extra + path
print(json.dumps({"path": path, "tag": sys.implementation.cache_tag, "magic": importlib.util.MAGIC_NUMBER.hex(),
    "version": "%d.%d.%d" % sys.version_info[:3], "prefix": sys.pycache_prefix, "executable": sys.executable}))
"""
_FINGERPRINT_SUFFIXES = (".dist-info", ".egg-info", ".pth", ".egg-link")
BATCH = 400  # files per compileall run (argv stays far below ARG_MAX)


class BytecodeError(Exception):
    """The environment could not be asked or scanned; one line."""


@dataclass(frozen=True)
class PyEnv:
    python: str
    path: tuple[str, ...]  # existing directories of sys.path, in order
    tag: str  # sys.implementation.cache_tag ("cpython-312")
    magic: bytes
    version: str
    pycache_prefix: Optional[str]


@dataclass
class Scan:
    total: int = 0
    missing: list[str] = field(default_factory=list)  # .py without a valid cache file
    unwritable: int = 0  # of the missing, those whose __pycache__ the vLLM user cannot write

    def summary(self) -> str:
        return f"{len(self.missing)} of {self.total} files without bytecode"


def env_info(python: str, env: Mapping[str, str], run_as: RunAs, timeout_s: float = 60) -> PyEnv:
    """The vLLM interpreter's sys.path, cache tag and magic, as the vLLM user sees them."""
    if run_as.uid == 0 or (not run_as.switch and os.geteuid() == 0):
        pythonpath = env.get("PYTHONPATH", "").split(os.pathsep)
        argv = [python, "-I", "-S", "-c", _INFO, *pythonpath]  # as root: no site, no .pth, nothing of the env
        run_env: Mapping[str, str] = {"PATH": SAFE_PATH, "LANG": "C.UTF-8"}
        user: Mapping[str, object] = {}
    else:
        argv, run_env, user = [python, "-c", _INFO], env, popen_user_kwargs(run_as)
    try:
        res = subp.run(argv, timeout_s, env=run_env, cwd="/", user=user)
    except subp.CommandError as exc:
        raise BytecodeError(str(exc)) from None
    try:
        doc = json.loads(res.stdout.strip().splitlines()[-1]) if res.returncode == 0 else None
        if not isinstance(doc, dict):
            raise ValueError
        paths = tuple(dict.fromkeys(p for p in doc["path"] if isinstance(p, str) and p.startswith("/")))
        tag, magic, version, prefix = str(doc["tag"]), bytes.fromhex(doc["magic"]), str(doc["version"]), doc["prefix"]
    except (ValueError, KeyError, IndexError, TypeError):
        last = (res.stderr.strip().splitlines() or ["no output"])[-1][:200]
        why = f"exit {res.returncode}: {last}"
        raise BytecodeError(f"{python} as {run_as.name}: cannot read its sys.path ({why})") from None
    return PyEnv(python, tuple(p for p in paths if os.path.isdir(p)), tag, magic, version, prefix)


def cache_file(py: str, tag: str) -> str:
    """importlib.util.cache_from_source for ``tag`` (the vLLM interpreter's, not necessarily ours)."""
    head, name = os.path.split(py)
    return os.path.join(head, "__pycache__", f"{name[:-3]}.{tag}.pyc")


def cache_valid(py: str, st: os.stat_result, env: PyEnv) -> bool:
    """The interpreter would use the cache file: its magic, and (timestamp pyc) the source's mtime and size, or
    (checked hash pyc) the source hash. An unchecked hash pyc is used as it is."""
    try:
        head = hpaths.read_capped(cache_file(py, env.tag), 16)
    except OSError:
        return False
    if len(head) < 16 or head[:4] != env.magic:
        return False
    flags = int.from_bytes(head[4:8], "little")
    if flags == 0:
        mtime, size = int.from_bytes(head[8:12], "little"), int.from_bytes(head[12:16], "little")
        return mtime == (int(st.st_mtime) & 0xFFFFFFFF) and size == (st.st_size & 0xFFFFFFFF)
    if not flags & 0b10 or env.magic != importlib.util.MAGIC_NUMBER:
        return True  # unchecked, or another Python's source hash key: it is that interpreter's to judge
    try:
        return importlib.util.source_hash(hpaths.read_capped(py, 1 << 28)) == head[8:16]
    except OSError:
        return False


def can_write(st: os.stat_result, uid: int, groups: Sequence[int]) -> bool:
    if uid == 0:
        return True
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IWUSR)
    if st.st_gid in groups:
        return bool(st.st_mode & stat.S_IWGRP)
    return bool(st.st_mode & stat.S_IWOTH)


def importable_files(env: PyEnv) -> list[tuple[str, os.stat_result]]:
    """Every .py an import could load from the path: modules and packages with identifier names (namespace
    packages included), each directory once however many path entries reach it."""
    out: list[tuple[str, os.stat_result]] = []
    seen: set[tuple[int, int]] = set()
    stack = list(reversed(env.path))
    while stack:
        top = stack.pop()
        try:
            st = hpaths.file_stat(top)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            entries = hpaths.scan(top)
        except OSError:
            continue
        subdirs = []
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=False):
                    if e.name.isidentifier():
                        subdirs.append(e.path)
                elif e.name.endswith(".py") and e.name[:-3].isidentifier() and e.is_file(follow_symlinks=False):
                    out.append((e.path, e.stat(follow_symlinks=False)))
            except OSError:
                continue
        stack.extend(sorted(subdirs, reverse=True))
    return out


def scan(env: PyEnv, run_as: RunAs) -> Scan:
    """Which importable .py files lack a valid cache file, and how many of those the vLLM user cannot fix."""
    result = Scan()
    writable: dict[str, bool] = {}
    for py, st in importable_files(env):
        result.total += 1
        if cache_valid(py, st, env):
            continue
        result.missing.append(py)
        d = os.path.dirname(py)
        if d not in writable:
            cache = os.path.join(d, "__pycache__")
            try:
                dst = hpaths.file_stat(cache) if os.path.isdir(cache) else hpaths.file_stat(d)
                writable[d] = can_write(dst, run_as.uid, run_as.groups)
            except OSError:
                writable[d] = False
        if not writable[d]:
            result.unwritable += 1
    return result


def fingerprint(env: PyEnv) -> str:
    """Changes when the environment does: the interpreter, its path, each path directory's mtime and its
    dist-info/egg-info/.pth set with their mtimes (pip install/uninstall/upgrade touch all of these)."""
    h = hashlib.sha256(json.dumps([env.python, os.path.realpath(env.python), env.tag, env.path]).encode())
    for p in env.path:
        try:
            h.update(f"{p}\0{hpaths.file_stat(p).st_mtime_ns}\0".encode())
            for e in hpaths.scan(p):
                if e.name.endswith(_FINGERPRINT_SUFFIXES):
                    h.update(f"{e.name}\0{e.stat(follow_symlinks=False).st_mtime_ns}\0".encode())
        except OSError:
            h.update(f"{p}\0gone\0".encode())
    return h.hexdigest()


def _root_may_write(d: str) -> str:
    """ "" when root may create ``d/__pycache__`` files; else why not (someone else could write or swap it)."""
    cache = os.path.join(d, "__pycache__")
    try:
        for path in (d, cache):
            if not os.path.lexists(path):
                continue
            st = hpaths.file_stat(path, follow=False)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
                return f"{path}: not a root-owned directory only root can write; root does not write there"
        up = os.path.dirname(d)
        while True:
            st = hpaths.file_stat(up, follow=False)
            if st.st_uid != 0 or (st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX):
                return f"{up} (above {d}) can be written by someone else"
            if up == "/":
                return ""
            up = os.path.dirname(up)
    except OSError as exc:
        return f"{d}: {exc.strerror or exc}"


@dataclass
class CompileReport:
    compiled_by: dict[str, int] = field(default_factory=dict)  # "root"/"uid 1000" -> files handed to compileall
    refused: list[str] = field(default_factory=list)  # one line per directory left alone
    errors: list[str] = field(default_factory=list)


def compile_missing(python: str, missing: Sequence[str], workers: int = 0) -> CompileReport:
    """Compile ``missing`` with ``python -I -S -m compileall``, each directory as its owner. Needs root to
    act for another owner; as a non-root agent only its own directories are compiled."""
    from concurrent.futures import ThreadPoolExecutor  # imports logging: not on doctor's path

    report = CompileReport()
    by_owner: dict[tuple[int, int], list[str]] = {}
    verdict: dict[str, Optional[tuple[int, int]]] = {}
    euid = os.geteuid()
    for py in missing:
        d = os.path.dirname(py)
        if d not in verdict:
            try:
                st = hpaths.file_stat(d, follow=False)
            except OSError as exc:
                report.refused.append(f"{d}: {exc.strerror or exc}")
                verdict[d] = None
                continue
            why = _root_may_write(d) if st.st_uid == 0 else ""
            if not why and euid not in (0, st.st_uid):
                why = f"{d} belongs to uid {st.st_uid}; the agent (uid {euid}) cannot act for it"
            verdict[d] = None if why else (st.st_uid, st.st_gid)
            if why:
                report.refused.append(why)
        owner = verdict[d]
        if owner is not None:
            by_owner.setdefault(owner, []).append(py)
    for owner in list(by_owner):  # each owner runs the interpreter: only one it (or root) alone can change
        why = interpreter_unsafe(python, owner[0])
        if why:
            who = "root" if owner[0] == 0 else f"uid {owner[0]}"
            report.refused.append(f"{why}; {who} does not run it ({len(by_owner.pop(owner))} files left)")
    jobs = [
        (owner, files[i : i + BATCH]) for owner, files in sorted(by_owner.items()) for i in range(0, len(files), BATCH)
    ]
    env = {"PATH": SAFE_PATH, "LANG": "C.UTF-8"}  # no SOURCE_DATE_EPOCH: timestamp pycs, what pip writes

    def run(job: tuple[tuple[int, int], list[str]]) -> str:
        (uid, gid), files = job
        user: dict[str, object] = {} if uid == euid else {"user": uid, "group": gid, "extra_groups": []}
        try:
            res = subp.run([python, "-I", "-S", "-m", "compileall", "-q", *files], 600, env=env, cwd="/", user=user)
        except subp.CommandError as exc:
            return str(exc)
        # compileall exits 1 when a file does not compile (py2 syntax in a test dir, say): counted by the rescan
        return "" if res.returncode in (0, 1) else f"compileall exit {res.returncode}: {res.stderr.strip()[-200:]}"

    with ThreadPoolExecutor(max_workers=workers or max(1, min(16, os.cpu_count() or 1))) as pool:
        for (owner, files), err in zip(jobs, pool.map(run, jobs)):
            who = "root" if owner[0] == 0 else f"uid {owner[0]}"
            report.compiled_by[who] = report.compiled_by.get(who, 0) + len(files)
            if err:
                report.errors.append(err)
    return report
