"""What to warm: files, directories and Hugging Face model ids resolved into files, and the memory budget.

Targets are data paths, not host configuration: they are used as given (not re-rooted under ``--root``); only
/proc/meminfo (the budget's MemAvailable) is read through the Host seam. Model ids are resolved offline in the
local HF cache; links are followed only while they stay inside the snapshot's cache (or the named directory). The
cache is where the host keeps it (serving/hf_cache.vllm_hf_cache, re-exported here): ``~`` is the vLLM user's home
as the host's accounts say, and under ``--root`` the cache lies in the tree (Host.path), as vLLM there finds it.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from vllm_nodeagent.host import Host, HostError, paths
from vllm_nodeagent.host.parse import ParseError, parse_meminfo
from vllm_nodeagent.serving.hf_cache import expand_home, hf_cache_dir, vllm_hf_cache

if TYPE_CHECKING:
    from vllm_nodeagent.config import Config

__all__ = [
    "WANTED_NAMES",
    "WANTED_SUFFIXES",
    "BudgetError",
    "WarmFile",
    "apply_budget",
    "budget_from_config",
    "config_targets",
    "expand_home",  # serving/hf_cache.py, here for prewarm's API (docs/prewarm.md)
    "hf_cache_dir",
    "mem_available",
    "parse_budget",
    "resolve_hf",
    "resolve_targets",
    "vllm_hf_cache",
    "wanted",
]

# What vLLM reads at start: weights, configs, tokenizers, chat templates.
WANTED_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".json", ".model", ".tiktoken", ".jinja")
WANTED_NAMES = frozenset({"vocab.txt", "merges.txt", "tokenizer.model", "spiece.model", "vocab.json"})

_HF_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9][A-Za-z0-9_.\-]*)?(@[A-Za-z0-9_.\-/]+)?")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_SNAPSHOT_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,128}")  # what a ref may name: one path component


class BudgetError(ValueError):
    """A --budget value that is neither a byte count nor a fraction in (0, 1]."""


@dataclass
class WarmFile:
    path: str  # the path as found (a snapshot link, or the file)
    real: str  # the file read (the blob)
    size: int
    dev: int
    ino: int
    # Byte ranges (offset, length) to read instead of the whole file: the pages a serving vLLM had in the page
    # cache (prewarm/learned.py). Empty: the whole file.
    ranges: tuple[tuple[int, int], ...] = ()

    @property
    def want(self) -> int:
        """The bytes a warm-up of this file reads: its ranges, else all of it."""
        return sum(n for _, n in self.ranges) if self.ranges else self.size


# -- budget ---------------------------------------------------------------------------------------------
_SUFFIX = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def mem_available(host: Host) -> int:
    """MemAvailable from /proc/meminfo (via the Host seam), in bytes; raises HostError/ParseError/KeyError."""
    return parse_meminfo(host.read("/proc/meminfo"))["MemAvailable"]


def budget_from_config(host: Host, fraction: float) -> int:
    """``fraction`` of MemAvailable, in bytes."""
    if not 0 < fraction <= 1:
        raise BudgetError(f"budget fraction must be in (0, 1], got {fraction}")
    return int(mem_available(host) * fraction)


def parse_budget(text: str, host: Host) -> int:
    """A byte count ("64G", "512M", "1073741824"; K/M/G/T are powers of 1024, optional "i"/"B") or a fraction of
    MemAvailable written with a decimal point ("0.5", "1.0"). Raises BudgetError with a one-line message."""
    s = text.strip()
    if "." in s:
        try:
            frac = float(s)
        except ValueError:
            raise BudgetError(f"--budget {text!r}: expected bytes (e.g. 64G) or a fraction in (0, 1]") from None
        if not 0 < frac <= 1:
            raise BudgetError(f"--budget {text!r}: a fraction must be in (0, 1]")
        try:
            return budget_from_config(host, frac)
        except (HostError, ParseError, KeyError) as exc:
            raise BudgetError(f"--budget {text!r}: cannot read MemAvailable: {exc}") from None
    m = re.fullmatch(r"(\d+)\s*([KMGTkmgt]?)(?:i?[Bb])?", s)
    if not m:
        raise BudgetError(f"--budget {text!r}: expected bytes (e.g. 64G) or a fraction in (0, 1]")
    value = int(m.group(1)) * _SUFFIX[m.group(2).upper()]
    if value <= 0:
        raise BudgetError(f"--budget {text!r}: must be positive")
    return value


# -- target resolution ----------------------------------------------------------------------------------
def config_targets(config: Config) -> tuple[list[str], dict[str, str]]:
    """Targets from ``[prewarm] paths`` (+ ``[vllm] model`` when include_model) and the environment to resolve
    model ids in: the process environment overlaid with ``[vllm] env`` (vLLM looks where its env says)."""
    targets: list[str] = []
    env = dict(os.environ)
    if config.prewarm is not None:
        targets.extend(config.prewarm.paths)
    include_model = config.prewarm.include_model if config.prewarm is not None else True
    if config.vllm is not None:
        env.update(config.vllm.env)
        if include_model and config.vllm.model and config.vllm.model not in targets:
            targets.append(config.vllm.model)
    return targets, env


def wanted(name: str) -> bool:
    return name in WANTED_NAMES or name.endswith(WANTED_SUFFIXES)


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _hf_repo_root(directory: str) -> Optional[str]:
    """For a directory inside an HF cache (``.../models--X--Y/snapshots/<rev>/...``) the cache root."""
    parts = directory.rstrip("/").split("/")
    for i in range(len(parts) - 2, 0, -1):
        if parts[i] == "snapshots" and parts[i - 1].startswith("models--"):
            return "/".join(parts[: i - 1]) or "/"
    return None


class _Collector:
    def __init__(self) -> None:
        self.files: list[WarmFile] = []
        self.errors: list[str] = []
        self._seen: set[tuple[int, int]] = set()

    def add(self, shown: str, real: str) -> None:
        try:
            st = paths.file_stat(real)
        except OSError as exc:
            self.errors.append(f"{shown}: {exc.strerror or exc}")
            return
        if not stat.S_ISREG(st.st_mode):
            self.errors.append(f"{shown}: not a regular file")
            return
        key = (st.st_dev, st.st_ino)
        if key in self._seen:  # each blob once, however many snapshots link to it
            return
        self._seen.add(key)
        self.files.append(WarmFile(shown, real, st.st_size, st.st_dev, st.st_ino))

    def walk(self, top: str, allowed_root: str) -> int:
        """Add the wanted files under ``top``; links are followed only when they stay inside ``allowed_root``."""
        found = 0

        def onerror(exc: OSError) -> None:
            self.errors.append(f"{exc.filename}: {exc.strerror or exc}")

        for dirpath, dirnames, filenames in os.walk(top, onerror=onerror):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if not wanted(name):
                    continue
                shown = os.path.join(dirpath, name)
                real = os.path.realpath(shown)
                if not _within(real, allowed_root):
                    self.errors.append(f"{shown}: refusing link to {real}, outside {allowed_root}")
                    continue
                self.add(shown, real)
                found += 1
        return found


_REF_MAX = 256  # a ref file holds one 40-hex commit id and a newline


def _read_ref(ref: str, repo_real: str) -> str:
    """The snapshot a ref file names. The ref must lie inside the repo's cache dir (no link out of it) and hold
    one path component (huggingface_hub writes a 40-hex commit id). Its content is never echoed: a ref planted
    to point at another file must not leak that file's first line."""
    real = os.path.realpath(ref)
    if not _within(real, repo_real):
        raise LookupError(f"{ref}: refusing a ref that leads out of the cache ({real})")
    try:
        fd = paths.open_regular(real)  # O_NOFOLLOW, a regular file only, never blocks
    except OSError as exc:
        raise LookupError(f"{ref}: cannot read: {exc.strerror or exc}") from None
    try:
        data = os.read(fd, _REF_MAX + 1)
    finally:
        os.close(fd)
    commit = data.decode("ascii", errors="replace").strip()
    if len(data) > _REF_MAX or not _SNAPSHOT_NAME.fullmatch(commit) or commit in (".", ".."):
        raise LookupError(f"{ref}: does not hold a snapshot name (a commit id); content not shown")
    return commit


def resolve_hf(model_id: str, cache: str) -> tuple[str, str]:
    """(snapshot directory, allowed root) of a model id in the local HF cache, offline. Raises LookupError.
    A revision is a ref name (``main``, ``refs/pr/1``) or a commit id: "..", "." or empty components are refused,
    and the ref file and the snapshot must both resolve inside the cache."""
    name, _, revision = model_id.partition("@")
    cache_real = os.path.realpath(cache)
    repo = os.path.join(cache, "models--" + name.replace("/", "--"))
    if not os.path.isdir(repo):
        raise LookupError(f"{model_id}: not a path, and not in the Hugging Face cache {cache} (resolved offline)")
    repo_real = os.path.realpath(repo)
    if not _within(repo_real, cache_real):
        raise LookupError(f"{model_id}: refusing {repo}: it leads out of the cache ({repo_real})")
    rev = revision or "main"
    if any(part in ("", ".", "..") for part in rev.split("/")):
        raise LookupError(f"{model_id}: revision {rev!r} is not a ref name or commit id (empty, '.' or '..' part)")
    commit = ""
    ref = os.path.join(repo, "refs", rev)
    if os.path.lexists(ref) and not os.path.isdir(ref):
        commit = _read_ref(ref, repo_real)
    elif _COMMIT.fullmatch(rev):
        commit = rev
    else:
        snaps = paths.entries(os.path.join(repo, "snapshots")) if os.path.isdir(os.path.join(repo, "snapshots")) else []
        if not revision and len(snaps) == 1:
            commit = snaps[0]
        else:
            raise LookupError(f"{model_id}: no refs/{rev} in {repo} (snapshots: {', '.join(snaps) or 'none'})")
    if "/" in commit or not commit or commit in (".", ".."):
        raise LookupError(f"{model_id}: bad snapshot name in {repo}/snapshots")
    snapshot = os.path.join(repo, "snapshots", commit)
    if not os.path.isdir(snapshot):
        raise LookupError(f"{model_id}: snapshot {snapshot} is missing (incomplete download?)")
    if not _within(os.path.realpath(snapshot), repo_real):
        raise LookupError(f"{model_id}: refusing snapshot {snapshot}: it leads out of the cache")
    return snapshot, cache_real


def resolve_targets(targets: Sequence[str], hf_cache: Optional[str] = None) -> tuple[list[WarmFile], list[str]]:
    """The files to warm (largest first, each inode once) and one message per target problem."""
    cache = hf_cache or hf_cache_dir()
    col = _Collector()
    for target in targets:
        if os.path.lexists(target):
            if os.path.isdir(target):
                real_top = os.path.realpath(target)
                allowed = _hf_repo_root(real_top) or _hf_repo_root(os.path.abspath(target)) or real_top
                if col.walk(target, os.path.realpath(allowed)) == 0:
                    col.errors.append(f"{target}: no model files found (weights, configs, tokenizer)")
            else:
                col.add(target, os.path.realpath(target))  # an explicitly named file is read wherever it lies
        elif _HF_ID.fullmatch(target) and not target.startswith(("/", ".")):
            try:
                snapshot, allowed = resolve_hf(target, cache)
            except (LookupError, OSError) as exc:
                col.errors.append(str(exc))
                continue
            if col.walk(snapshot, allowed) == 0:
                col.errors.append(f"{target}: snapshot {snapshot} holds no model files")
        else:
            col.errors.append(f"{target}: no such file or directory")
    col.files.sort(key=lambda f: (-f.size, f.path))
    return col.files, col.errors


def apply_budget(files: list[WarmFile], budget: Optional[int], first: int = 0) -> tuple[list[WarmFile], list[WarmFile]]:
    """The first ``first`` files (the serving stack) in order, then the rest largest first: take each file that
    still fits; a file never partly. Returns (taken, skipped)."""
    if budget is None:
        return list(files), []
    taken: list[WarmFile] = []
    skipped: list[WarmFile] = []
    left = budget
    for f in files[:first] + sorted(files[first:], key=lambda f: (-f.want, f.path)):
        if f.want <= left:
            taken.append(f)
            left -= f.want
        else:
            skipped.append(f)
    return taken, skipped
