"""Check 2: model storage as the service user sees it.

The filesystem the weights come from (network, FUSE and overlay filesystems make the first load crawl and
stall workers: prewarm first), whether the page cache can hold them (MemAvailable vs the model size), free
space where downloads and caches go, and whether the ``[vllm]`` user can write HF_HOME, VLLM_CACHE_ROOT and the
torch/Triton compile caches. Write access is judged from uid, gids and mode bits (ACLs aside); the service
user is never impersonated.
"""

from __future__ import annotations

import os
import shlex
import stat
from typing import Optional

from vllm_nodeagent.checks.base import CheckResult, Probe, Registered
from vllm_nodeagent.checks.status import Status
from vllm_nodeagent.host import paths
from vllm_nodeagent.host.accounts import Account, Accounts
from vllm_nodeagent.host.parse import ParseError, parse_meminfo

GIB = 1 << 30
FREE_MINIMUM = 10 * GIB  # compile caches and a download's temporary files
NETWORK_FS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "ceph",
        "glusterfs",
        "lustre",
        "beegfs",
        "gpfs",
        "9p",
        "afs",
        "virtiofs",
        "davfs",
        "sshfs",
        "ocfs2",
        "gfs2",
        "orangefs",
        "pvfs2",
    }
)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
RESIDENT_MINIMUM = 0.90  # below this share of the weights in the page cache, the first load reads from storage
PREWARM_HINT = (
    "run `vllm-nodeagent prewarm` before launch ([prewarm] include_model = true) or copy the model to local NVMe"
)


def parse_mountinfo(text: str) -> list[tuple[str, str, str]]:
    """(mount point, fs type, source) per /proc/self/mountinfo line; octal escapes (\\040) decoded."""
    out: list[tuple[str, str, str]] = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        f, r = left.split(), right.split()
        if not sep or len(f) < 5 or len(r) < 2:
            continue
        point = f[4].encode().decode("unicode_escape") if "\\" in f[4] else f[4]
        out.append((point, r[0], r[1]))
    return out


def mount_of(mounts: list[tuple[str, str, str]], path: str) -> Optional[tuple[str, str, str]]:
    """The mount holding ``path``: the longest mount point that prefixes it (the last mounted wins a tie)."""
    best: Optional[tuple[str, str, str]] = None
    for m in mounts:
        p = m[0].rstrip("/") or "/"
        if (path == p or path.startswith(p.rstrip("/") + "/")) and (best is None or len(p) >= len(best[0])):
            best = m
    return best


def fs_class(fstype: str) -> str:
    """ "network", "fuse", "overlay" or "local"."""
    if fstype in NETWORK_FS:
        return "network"
    if fstype == "fuse" or fstype.startswith(("fuse.", "fuseblk")):
        return "fuse"
    return "overlay" if fstype == "overlay" else "local"


def may_write(st_uid: int, st_gid: int, mode: int, acct: Account) -> bool:
    """Whether ``acct`` may create entries in a directory with this owner and mode (needs w and x)."""
    if acct.uid == 0:
        return True
    if st_uid == acct.uid:
        bits = (mode >> 6) & 7
    elif st_gid in acct.groups:
        bits = (mode >> 3) & 7
    else:
        bits = mode & 7
    return bits & 3 == 3


def may_search(st_uid: int, st_gid: int, mode: int, acct: Account) -> bool:
    if acct.uid == 0:
        return True
    shift = 6 if st_uid == acct.uid else 3 if st_gid in acct.groups else 0
    return bool((mode >> shift) & 1)


def expand(value: str, home: str) -> str:
    return home + value[1:] if value == "~" or value.startswith("~/") else value


def cache_dirs(probe: Probe, acct: Account) -> dict[str, str]:
    """The caches vLLM, huggingface_hub, torch and Triton write for this user, as their defaults pick them."""

    def env(key: str) -> Optional[str]:
        v = probe.vllm_env(key)
        return expand(v, acct.home) if v else None

    xdg = env("XDG_CACHE_HOME") or f"{acct.home}/.cache"
    return {
        "HF_HOME": env("HF_HOME") or f"{xdg}/huggingface",
        "VLLM_CACHE_ROOT": env("VLLM_CACHE_ROOT") or f"{xdg}/vllm",
        "TORCHINDUCTOR_CACHE_DIR": env("TORCHINDUCTOR_CACHE_DIR") or f"/tmp/torchinductor_{acct.name}",  # noqa: S108
        "TRITON_CACHE_DIR": env("TRITON_CACHE_DIR") or f"{acct.home}/.triton/cache",
    }


def writable(probe: Probe, path: str, acct: Account) -> tuple[bool, str]:
    """(the user can create or write ``path``, why) walking from / down to the deepest existing component."""
    parts = [p for p in path.split("/") if p]
    cur = "/"
    for i in range(len(parts) + 1):
        try:
            st = paths.file_stat(probe.host.path(cur))
        except OSError:
            break
        if not stat.S_ISDIR(st.st_mode):
            return False, f"{cur} is not a directory"
        last = i == len(parts) or not probe.host.exists(cur.rstrip("/") + "/" + parts[i])
        if last:
            ok = may_write(st.st_uid, st.st_gid, st.st_mode, acct)
            what = "exists" if cur == path.rstrip("/") or cur == path else f"would be created in {cur}"
            return ok, f"{what}: owner {st.st_uid}:{st.st_gid} mode {stat.S_IMODE(st.st_mode):o}"
        if not may_search(st.st_uid, st.st_gid, st.st_mode, acct):
            return False, f"cannot enter {cur} (mode {stat.S_IMODE(st.st_mode):o})"
        cur = cur.rstrip("/") + "/" + parts[i]
    return False, f"{cur}: unreadable"


def model_dir(probe: Probe, model: str, acct: Optional[Account]) -> tuple[Optional[str], str]:
    """(host path of the model's files or None, where it would be): a local path, or an HF id in the cache."""
    if model.startswith("/"):
        return (model if probe.host.is_dir(model) else None), model
    from vllm_nodeagent.serving.hf_cache import hf_cache_dir  # the one precedence (HF_HUB_CACHE ... ~/.cache)

    env = probe.config.vllm.env if probe.config.vllm is not None else {}
    hub = hf_cache_dir(env, acct.home if acct else "/root", Accounts.of(probe.host))
    repo = f"{hub}/models--{model.partition('@')[0].replace('/', '--')}"
    return (repo if probe.host.is_dir(repo) else None), hub


def weights_size(probe: Probe, directory: str) -> int:
    """Bytes of the weight files under ``directory``, each blob once (HF snapshots link into blobs/). In an HF
    repo only the snapshot refs/main names counts, when there is one."""
    ref = (probe.host.read_or(f"{directory}/refs/main", "") or "").strip()
    if ref and "/" not in ref and probe.host.is_dir(f"{directory}/snapshots/{ref}"):
        directory = f"{directory}/snapshots/{ref}"
    seen: set[str] = set()
    total = 0
    top = probe.host.path(directory)
    for dirpath, _dirs, files in os.walk(top):
        rel = os.path.relpath(dirpath, top)
        for name in files:
            if not name.endswith(WEIGHT_SUFFIXES):
                continue
            real = probe.host.realpath(os.path.normpath(f"{directory}/{rel}/{name}"))
            if real in seen:
                continue
            seen.add(real)
            try:
                st = paths.file_stat(probe.host.path(real))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


def checks(probe: Probe) -> list[CheckResult]:
    cfg = probe.config.vllm
    if cfg is None or not cfg.model:
        return [CheckResult("storage", Status.SKIP, None, None, "", "no [vllm] model configured")]
    acct = probe.account(cfg.user)
    found, where = model_dir(probe, cfg.model, acct)
    results = [fs_check(probe, found or where, found is not None)]
    size = weights_size(probe, found) if found else 0
    results.append(memory_check(probe, size, found))
    results.append(residency_check(probe, cfg.model, found, where))
    results.append(free_check(probe, found or where))
    if acct is None:
        results.append(
            CheckResult(
                "storage.cache_writable",
                Status.SKIP,
                f"user {cfg.user} not in /etc/passwd",
                None,
                "",
                "cannot judge an unknown user",
            )
        )
    else:
        results += writable_checks(probe, acct)
    return results


def fs_check(probe: Probe, path: str, present: bool) -> CheckResult:
    cid = "storage.model_fs"
    mounts = parse_mountinfo(probe.host.read_or("/proc/self/mountinfo", "") or "")
    real = probe.host.realpath(path) if probe.host.exists(path) else path
    m = mount_of(mounts, real)
    if m is None:
        return CheckResult(cid, Status.SKIP, real, "local filesystem", "", "no mount table (/proc/self/mountinfo)")
    kind = fs_class(m[1])
    current = f"{real} on {m[0]} ({m[1]}, {m[2]})"
    note = "" if present else "model not downloaded yet: this is where it will go"
    if kind == "local":
        return CheckResult(cid, Status.PASS, current, "local filesystem", "", note)
    return CheckResult(
        cid,
        Status.WARN,
        current,
        "local filesystem",
        PREWARM_HINT,
        f"{kind} filesystem: the first load reads at its speed and can stall workers" + (f"; {note}" if note else ""),
    )


def memory_check(probe: Probe, size: int, found: Optional[str]) -> CheckResult:
    cid = "storage.model_memory"
    if not found or size == 0:
        return CheckResult(cid, Status.SKIP, None, "weights fit in MemAvailable", "", "no weight files found locally")
    try:
        avail = parse_meminfo(probe.host.read_or("/proc/meminfo", "") or "").get("MemAvailable")
    except ParseError as exc:
        return CheckResult(cid, Status.SKIP, None, None, "", f"/proc/meminfo: {exc}")
    if avail is None:
        return CheckResult(cid, Status.SKIP, None, None, "", "no MemAvailable in /proc/meminfo")
    current = f"weights {size / GIB:.1f} GiB, MemAvailable {avail / GIB:.1f} GiB"
    if size > avail:
        return CheckResult(
            cid,
            Status.WARN,
            current,
            "weights fit in MemAvailable",
            "add memory or accept disk-speed loads ([prewarm] cannot hold what does not fit)",
            "the page cache cannot hold the weights: every restart reads them from storage",
        )
    return CheckResult(cid, Status.PASS, current, "weights fit in MemAvailable")


def residency_check(probe: Probe, model: str, found: Optional[str], hub: str) -> CheckResult:
    """How much of the weights the page cache holds now, by prewarm's own resolution (HF snapshot refs, each blob
    once, no link out of the cache) and residency's cachestat(2)/mincore(2)."""
    cid = "storage.model_residency"
    want = f">= {RESIDENT_MINIMUM:.0%} of the weights in the page cache"
    if not found:
        return CheckResult(cid, Status.SKIP, None, want, "", "no weight files found locally")
    # Imported here: ctypes (residency) costs doctor's start-up only when a model is present.
    from vllm_nodeagent.prewarm.residency import HIDDEN, Residency, resident_bytes
    from vllm_nodeagent.prewarm.targets import resolve_hf, resolve_targets

    try:
        cache = str(probe.host.path(hub))
        target = str(probe.host.path(model)) if model.startswith("/") else resolve_hf(model, cache)[0]
        files, _problems = resolve_targets([target], hf_cache=cache)
        weights = [f for f in files if f.path.endswith(WEIGHT_SUFFIXES)]
        res = Residency()
        counted = [(f, resident_bytes(res, f)) for f in weights]
    except (LookupError, OSError, ValueError) as exc:
        return CheckResult(cid, Status.SKIP, None, want, "", f"weights not readable: {exc}")
    if any(r == HIDDEN for _, r in counted):
        # The kernel reports every page as cached to a caller that neither owns nor may write the file.
        return CheckResult(
            cid,
            Status.SKIP,
            None,
            want,
            "run doctor as root",
            "the kernel hides these files' page-cache residency from this user",
        )
    sized = [(f.size, r) for f, r in counted if r is not None]  # None: the file went away meanwhile
    total = sum(s for s, _ in sized)
    if total == 0:
        return CheckResult(cid, Status.SKIP, None, want, "", "no weight files found locally")
    resident = sum(r for _, r in sized)
    share = resident / total
    current = (
        f"{share:.1%} of {len(sized)} weight file(s) resident ({resident / GIB:.1f} of {total / GIB:.1f} "
        f"GiB, {res.method})"
    )
    if share < RESIDENT_MINIMUM:
        return CheckResult(
            cid,
            Status.WARN,
            current,
            want,
            f"vllm-nodeagent prewarm {shlex.quote(model)}",
            "vLLM's first load reads the rest from storage",
        )
    return CheckResult(cid, Status.PASS, current, want)


def free_check(probe: Probe, path: str) -> CheckResult:
    cid = "storage.free_space"
    probe_at = path
    while not probe.host.exists(probe_at) and probe_at not in ("/", ""):
        probe_at = os.path.dirname(probe_at)
    space = probe.space(probe_at or "/")
    if space is None:
        return CheckResult(cid, Status.SKIP, path, None, "", "statvfs failed")
    current = f"{space[1] / GIB:.1f} GiB free of {space[0] / GIB:.1f} GiB at {probe_at}"
    want = f">= {FREE_MINIMUM // GIB} GiB free"
    if space[1] < FREE_MINIMUM:
        return CheckResult(
            cid,
            Status.WARN,
            current,
            want,
            "free space where the model and caches live",
            "downloads and compile caches fail with ENOSPC mid-load",
        )
    return CheckResult(cid, Status.PASS, current, want)


def writable_checks(probe: Probe, acct: Account) -> list[CheckResult]:
    out: list[CheckResult] = []
    for key, path in cache_dirs(probe, acct).items():
        cid = f"storage.writable.{key.lower()}"
        ok, why = writable(probe, path, acct)
        if ok:
            out.append(CheckResult(cid, Status.PASS, f"{path} ({why})", f"writable by {acct.name}"))
        else:
            out.append(
                CheckResult(
                    cid,
                    Status.FAIL,
                    f"{path} ({why})",
                    f"writable by {acct.name}",
                    f"install -d -o {acct.name} -g {acct.gid} {path}  (or set {key} in [vllm.env])",
                    f"vLLM running as {acct.name} fails when it writes there",
                )
            )
    return out


CHECKS = Registered(
    (
        "storage",
        "storage.cache_writable",
        "storage.writable.*",
        "storage.model_fs",
        "storage.model_memory",
        "storage.model_residency",
        "storage.free_space",
    ),
    checks,
)
