"""The serving stack as prewarm targets (issue 23): the vLLM interpreter and the libraries on its path.

After a reboot vLLM's start reads its interpreter, tens of thousands of ``.py``/``.pyc`` files and the ``.so``
libraries (torch's, the CUDA libraries that ship in wheels: ``nvidia/*/lib``) in small random reads before it
touches a weight; measured on an H200, warming them with the weights took a cold start 40-47 s -> 29-34 s. The
path is the vLLM interpreter's ``sys.path`` as the vLLM user sees it (serving/bytecode.py asks it the safe way).
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Sequence
from typing import TYPE_CHECKING, Optional

from vllm_nodeagent.host import Host
from vllm_nodeagent.host import paths as hpaths
from vllm_nodeagent.prewarm.targets import WarmFile

if TYPE_CHECKING:
    from vllm_nodeagent.config import Config

# What an import reads: source, bytecode, extension modules and the shared libraries they load (libfoo.so.12).
_STACK_FILE = re.compile(r".*(\.py|\.pyc|\.so(\.\d+)*)")
_SKIP_DIRS = frozenset({"tests", "benchmarks", "examples", "include", "docs"})  # never read by a start


LEARNED_FILE = "stack-learned.json"
_MAX_LEARNED = 1 << 20  # bytes of the learned list we accept back


STACK_FILES_MAX = 400_000  # an image's environment: ~70k; a path entry of "/" must not make root walk everything


def stack_files(
    python: str, paths: Sequence[str], learned_so: Optional[set[str]] = None, limit: int = STACK_FILES_MAX
) -> tuple[list[WarmFile], list[str]]:
    """The interpreter (and the libpython beside it) and what an import reads under ``paths``: ``.pyc``, ``.so``
    and the ``.py`` that have no ``__pycache__`` entry (a valid pyc is read instead of its source, which is only
    stat'ed). ``learned_so``: the libraries a serving vLLM had mapped (``learn``): only those .so are read (an
    image's environment holds far more than vLLM loads: JAX, CuPy, ...). Each inode once, in path order; links
    are not followed out of a path entry; tests, headers and docs are left out."""
    files: list[WarmFile] = []
    errors: list[str] = []
    seen: set[tuple[int, int]] = set()

    def add(shown: str, st: os.stat_result, real: Optional[str] = None) -> None:
        key = (st.st_dev, st.st_ino)
        if key in seen or not stat.S_ISREG(st.st_mode):
            return
        seen.add(key)
        files.append(WarmFile(shown, real or shown, st.st_size, st.st_dev, st.st_ino))

    exe = os.path.realpath(python)
    try:
        add(python, hpaths.file_stat(exe), exe)
        libdir = os.path.join(os.path.dirname(os.path.dirname(exe)), "lib")
        for name in sorted(hpaths.entries(libdir)) if os.path.isdir(libdir) else []:
            if name.startswith("libpython") and ".so" in name:
                real = os.path.realpath(os.path.join(libdir, name))
                add(real, hpaths.file_stat(real), real)
    except OSError as exc:
        errors.append(f"{python}: {exc.strerror or exc}")
    dirs_seen: set[tuple[int, int]] = set()
    for top in paths:
        stack = [top]
        while stack and len(files) < limit:
            d = stack.pop()
            try:
                # a path entry is taken as the interpreter names it; below it a directory swapped for a link
                # since the listing is not entered (each file is reopened by its inode when read)
                dst = hpaths.file_stat(d, follow=d == top)
                if (dst.st_dev, dst.st_ino) in dirs_seen or not stat.S_ISDIR(dst.st_mode):
                    continue
                dirs_seen.add((dst.st_dev, dst.st_ino))
                entries = hpaths.scan(d)
            except OSError as exc:
                if d == top:
                    errors.append(f"{d}: {exc.strerror or exc}")
                continue
            subdirs = []
            cached = _cached_stems(d, entries)
            for e in entries:
                try:
                    if e.is_dir(follow_symlinks=False):
                        if e.name not in _SKIP_DIRS and not e.name.endswith((".dist-info", ".egg-info")):
                            subdirs.append(e.path)
                    elif not _STACK_FILE.fullmatch(e.name) or not e.is_file(follow_symlinks=False):
                        continue
                    elif e.name.endswith(".py") and e.name[:-3] in cached:
                        continue  # its bytecode is read, not it
                    elif ".so" in e.name and learned_so is not None and os.path.realpath(e.path) not in learned_so:
                        continue
                    else:
                        add(e.path, e.stat(follow_symlinks=False))
                except OSError:
                    continue
            stack.extend(reversed(subdirs))
    if len(files) >= limit:
        errors.append(f"serving stack: stopped at {limit} files (is a path entry a whole filesystem?)")
    return files[:limit], errors


def _cached_stems(d: str, entries: list[os.DirEntry[str]]) -> set[str]:
    """Module names in ``d`` with a bytecode file in ``d/__pycache__`` (any interpreter tag)."""
    if not any(e.name == "__pycache__" for e in entries):
        return set()
    try:
        return {n.split(".", 1)[0] for n in hpaths.entries(os.path.join(d, "__pycache__")) if n.endswith(".pyc")}
    except OSError:
        return set()


def mapped_libraries(host: Host, pid: int) -> set[str]:
    """The shared libraries (``.so``) mapped by ``pid`` and its descendants (/proc/<pid>/maps, through the
    Host seam): what a serving vLLM actually loaded."""
    found: set[str] = set()
    todo, seen = [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        for line in (host.read_or(f"/proc/{p}/maps") or "").splitlines():
            parts = line.split(None, 5)
            if len(parts) == 6 and parts[5].startswith("/") and ".so" in os.path.basename(parts[5]):
                found.add(parts[5].removesuffix(" (deleted)"))
        for task in host.listdir(f"/proc/{p}/task"):
            todo.extend(int(c) for c in (host.read_or(f"/proc/{p}/task/{task}/children") or "").split() if c.isdigit())
    return found


def learn(host: Host, state_dir: str, pid: int) -> int:
    """Remember which libraries the serving vLLM (``pid``'s tree) mapped, for the next warm-ups; their count."""
    libs = sorted(mapped_libraries(host, pid))
    if libs:
        host.write_file_atomic(state_dir.rstrip("/") + "/" + LEARNED_FILE, json.dumps({"so": libs}).encode(), 0o644)
    return len(libs)


def learned_libraries(host: Host, state_dir: str) -> Optional[set[str]]:
    """What ``learn`` kept, or None (never learned, or unreadable: then every .so is warmed)."""
    text = host.read_or(state_dir.rstrip("/") + "/" + LEARNED_FILE)
    if not text or len(text) > _MAX_LEARNED:
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    libs = doc.get("so") if isinstance(doc, dict) else None
    return {p for p in libs if isinstance(p, str)} if isinstance(libs, list) else None


def config_stack(config: Config, host: Host, every_library: bool = False) -> tuple[list[WarmFile], list[str]]:
    """The stack of the configured vLLM (``[vllm]`` command/python/user/env); ([], [why]) when there is none to
    ask. The interpreter's path is asked as the vLLM user (serving/bytecode.env_info), never run as root.
    ``every_library``: every .so, not only those ``learn`` saw mapped."""
    from vllm_nodeagent.serving import bytecode as bc
    from vllm_nodeagent.serving.args import resolve_python
    from vllm_nodeagent.serving.env import SAFE_PATH, LaunchError, child_env, resolve_user
    from vllm_nodeagent.serving.plan import something_to_launch

    cfg = config.vllm
    if cfg is None or not something_to_launch(cfg):
        return [], []
    try:
        who = resolve_user(cfg.user, host)
    except LaunchError as exc:
        return [], [f"serving stack not warmed: {exc}"]
    env = child_env(cfg, who, [])
    python, why = resolve_python(list(cfg.command), cfg.python, env.get("PATH", SAFE_PATH))
    if not python:
        return [], [f"serving stack not warmed: no vLLM interpreter ({why})"]
    try:
        info = bc.env_info(python, env, who)
    except bc.BytecodeError as exc:
        return [], [f"serving stack not warmed: {exc}"]
    learned = None if every_library else learned_libraries(host, config.agent.state_dir)
    return stack_files(python, info.path, learned)


def tree_files(top: str, limit: int = 200_000) -> list[WarmFile]:
    """Every regular file under ``top``, in name order, depth first; links are neither followed nor read, and
    the reader opens each file by its (device, inode) again (one swapped since is refused).
    At most ``limit`` files: a cache tree is not allowed to make the warm-up walk forever."""
    files: list[WarmFile] = []
    todo = [top]
    while todo and len(files) < limit:
        d = todo.pop()
        try:
            entries = sorted(hpaths.scan(d), key=lambda e: e.name)
        except OSError:
            continue
        subdirs = []
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=False):
                    subdirs.append(e.path)
                elif e.is_file(follow_symlinks=False):
                    st = e.stat(follow_symlinks=False)
                    files.append(WarmFile(e.path, e.path, st.st_size, st.st_dev, st.st_ino))
            except OSError:
                continue
        todo.extend(reversed(subdirs))
    return files[:limit]


def config_compile_caches(config: Config, host: Host) -> list[WarmFile]:
    """The files of the agent-owned compile caches of the configured vLLM user (``[agent] cache_dir``/<user>:
    VLLM_CACHE_ROOT, torch inductor's and Triton's, serving/env.CACHE_VARS). A start without ``--enforce-eager``
    reads them after the weights (torch.compile's artifacts, CUDA graph capture's kernels); [] when none."""
    from vllm_nodeagent.serving.env import LaunchError, cache_dir_for, resolve_user
    from vllm_nodeagent.serving.plan import something_to_launch

    if config.vllm is None or not something_to_launch(config.vllm):
        return []
    try:
        who = resolve_user(config.vllm.user, host)
    except LaunchError:
        return []  # the start says why, once
    return tree_files(cache_dir_for(host, config.agent.cache_dir, who))
