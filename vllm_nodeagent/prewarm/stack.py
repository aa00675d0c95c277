"""The serving stack as prewarm targets (issue 23): the vLLM interpreter and the libraries on its path.

After a reboot vLLM's start reads its interpreter, tens of thousands of ``.py``/``.pyc`` files and the ``.so``
libraries (torch's, the CUDA libraries that ship in wheels: ``nvidia/*/lib``) in small random reads before it
touches a weight; measured on an H200, warming them with the weights took a cold start 40-47 s -> 29-34 s. The
path is the vLLM interpreter's ``sys.path`` as the vLLM user sees it (serving/bytecode.py asks it the safe way).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Sequence
from typing import TYPE_CHECKING, Optional

from vllm_nodeagent.prewarm.targets import WarmFile

if TYPE_CHECKING:
    from vllm_nodeagent.config import Config

# What an import reads: source, bytecode, extension modules and the shared libraries they load (libfoo.so.12).
_STACK_FILE = re.compile(r".*(\.py|\.pyc|\.so(\.\d+)*)")
_SKIP_DIRS = frozenset({"tests", "benchmarks", "examples", "include", "docs"})  # never read by a start


def stack_files(python: str, paths: Sequence[str]) -> tuple[list[WarmFile], list[str]]:
    """The interpreter (and the libpython beside it) and every .py/.pyc/.so under ``paths``, each inode once, in
    path order. Links are not followed out of a path entry; directories a start never imports from (tests,
    headers, docs) are left out."""
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
        add(python, os.stat(exe), exe)
        libdir = os.path.join(os.path.dirname(os.path.dirname(exe)), "lib")
        for name in sorted(os.listdir(libdir)) if os.path.isdir(libdir) else []:
            if name.startswith("libpython") and ".so" in name:
                real = os.path.realpath(os.path.join(libdir, name))
                add(real, os.stat(real), real)
    except OSError as exc:
        errors.append(f"{python}: {exc.strerror or exc}")
    dirs_seen: set[tuple[int, int]] = set()
    for top in paths:
        stack = [top]
        while stack:
            d = stack.pop()
            try:
                dst = os.stat(d)
                if (dst.st_dev, dst.st_ino) in dirs_seen:
                    continue
                dirs_seen.add((dst.st_dev, dst.st_ino))
                entries = sorted(os.scandir(d), key=lambda e: e.name)
            except OSError as exc:
                if d == top:
                    errors.append(f"{d}: {exc.strerror or exc}")
                continue
            subdirs = []
            for e in entries:
                try:
                    if e.is_dir(follow_symlinks=False):
                        if e.name not in _SKIP_DIRS and not e.name.endswith((".dist-info", ".egg-info")):
                            subdirs.append(e.path)
                    elif _STACK_FILE.fullmatch(e.name) and e.is_file(follow_symlinks=False):
                        add(e.path, e.stat(follow_symlinks=False))
                except OSError:
                    continue
            stack.extend(reversed(subdirs))
    return files, errors


def config_stack(config: Config) -> tuple[list[WarmFile], list[str]]:
    """The stack of the configured vLLM (``[vllm]`` command/python/user/env); ([], [why]) when there is none to
    ask. The interpreter's path is asked as the vLLM user (serving/bytecode.env_info), never run as root."""
    from vllm_nodeagent.serving import bytecode as bc
    from vllm_nodeagent.serving.args import resolve_python
    from vllm_nodeagent.serving.env import SAFE_PATH, LaunchError, child_env, resolve_user
    from vllm_nodeagent.serving.plan import something_to_launch

    cfg = config.vllm
    if cfg is None or not something_to_launch(cfg):
        return [], []
    try:
        who = resolve_user(cfg.user)
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
    return stack_files(python, info.path)
