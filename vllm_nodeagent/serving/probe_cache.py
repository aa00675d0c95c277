"""A cache of the vLLM argument probe (vllm_args.probe), so the vLLM import it costs (15-30 s on small hosts) is
paid once per install, not on every start, restart and doctor run.

One entry in one small JSON file, in a directory the running process owns (the root agent's state dir, the
serve unit's per-user cache dir). It is a hit only when every input matches (interpreter realpath, args, probe
flags, the uid the probe runs as, the environment keys that change what ``import vllm`` finds) and every path
the probe reported as identifying the install (interpreter, vllm package dir, its ``*.dist-info`` dir) still
has the stamp (st_mtime_ns, st_ino) it had: ``pip install -U`` replaces the dist-info dir, so an upgrade misses.
A damaged, foreign-owned or group/world-writable file is a miss, logged, never an error.
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import asdict
from typing import Any, Callable, Optional

from vllm_nodeagent import log
from vllm_nodeagent.host import Host, HostError
from vllm_nodeagent.host.trust import Refused
from vllm_nodeagent.serving.args import ProbeResult

CACHE_FILE = "vllm-probe-cache.json"
FORMAT = 1
# Environment keys that change which vLLM (or which parser) the child imports.
_ENV_KEYS = ("HOME", "VIRTUAL_ENV", "LD_LIBRARY_PATH", "LD_PRELOAD")
_ENV_PREFIXES = ("PYTHON", "VLLM_")
MAX_CACHE_BYTES = 1 << 20
REAL = Host("/")  # the cache dir is a real path: the probe runs on this machine, not under --root


def probe_inputs(
    python: str, args: list[str], probe_flags: tuple[str, ...], env: dict[str, str], uid: int
) -> dict[str, Any]:
    """What the probe's answer depends on, apart from the install itself (stamped separately)."""
    keys = sorted(k for k in env if k in _ENV_KEYS or k.startswith(_ENV_PREFIXES))
    return {
        "format": FORMAT,
        "python": python,
        "python_real": os.path.realpath(python),
        "args": list(args),
        "probe_flags": list(probe_flags),
        "uid": uid,
        "env": {k: env[k] for k in keys},
    }


def _stamp(path: str) -> Optional[list[int]]:
    try:
        st = REAL.stat(path)
    except HostError:
        return None
    return [st.st_mtime_ns, st.st_ino]


def usable_dir(directory: str) -> str:
    """ "" when ``directory`` is a real directory only the running uid (or root) can write, else why not."""
    try:
        os.close(REAL.open_dir(os.path.abspath(directory), "probe cache dir"))
    except HostError as exc:
        return str(exc) if isinstance(exc, Refused) else f"{directory}: {exc.strerror}"
    return ""


def lookup(directory: str, inputs: dict[str, Any]) -> tuple[Optional[ProbeResult], str]:
    """(the cached result, "") on a hit, else (None, why it missed)."""
    why = usable_dir(directory)
    if why:
        return None, why
    path = os.path.join(os.path.abspath(directory), CACHE_FILE)
    try:
        raw = REAL.read_file(path, "probe cache", cap=MAX_CACHE_BYTES)
    except HostError as exc:
        if exc.errno == errno.ENOENT:
            return None, "no cache file"
        return None, str(exc) if isinstance(exc, Refused) else f"{path}: {exc.strerror}"
    try:
        doc = json.loads(raw.decode("utf-8"))
        cached_inputs, stamps, result = doc["inputs"], dict(doc["stamps"]), dict(doc["result"])
        pr = ProbeResult(**{k: v for k, v in result.items() if k in ProbeResult.__dataclass_fields__})
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError) as exc:
        return None, f"{path}: damaged ({type(exc).__name__}: {exc})"
    if cached_inputs != inputs:
        changed = sorted(k for k in set(inputs) | set(cached_inputs) if inputs.get(k) != cached_inputs.get(k))
        return None, "inputs changed: " + ", ".join(changed)
    if not stamps:
        return None, f"{path}: no install stamps"
    for p, stamp in stamps.items():
        if _stamp(p) != stamp:
            return None, f"install changed: {p}"
    pr.cached = True
    return pr, ""


def store(directory: str, inputs: dict[str, Any], result: ProbeResult) -> str:
    """Write the entry through the one atomic writer (host/fsafe); "" or why it was not written."""
    directory = os.path.abspath(directory)
    if not os.path.lexists(directory):  # the first launch probes before anything created the state dir (H100)
        try:
            REAL.ensure_dir(
                directory, 0o700, what="probe cache dir", parents=False
            )  # only the last component: no parents
        except HostError as exc:
            return str(exc) if isinstance(exc, Refused) else f"{directory}: {exc.strerror}"
    why = usable_dir(directory)
    if why:
        return why
    stamps = {p: _stamp(p) for p in result.install}
    if not stamps or any(s is None for s in stamps.values()):
        return "the probe named no stampable install paths"
    data = asdict(result)
    data["cached"] = False
    body = json.dumps({"inputs": inputs, "stamps": stamps, "result": data}, sort_keys=True).encode()
    path = os.path.join(directory, CACHE_FILE)
    try:
        REAL.write_file_atomic(path, body, what="probe cache")
    except HostError as exc:
        return str(exc) if isinstance(exc, Refused) else f"{path}: {exc.strerror}"
    return ""


def cached_probe(directory: str, inputs: dict[str, Any], run: Callable[[], ProbeResult]) -> ProbeResult:
    """The cached answer for ``inputs`` from ``directory`` ("" = no cache), else ``run()`` and remember a
    usable answer (vLLM's parser was built; a failed probe is asked again next time)."""
    logger = log.get()
    if directory:
        hit, why = lookup(directory, inputs)
        if hit is not None:
            logger.info("vllm_probe_cached", version=hit.version, file=os.path.join(directory, CACHE_FILE))
            return hit
        (logger.warning if "damaged" in why or "owned" in why or "writable" in why else logger.info)(
            "vllm_probe_cache_miss", reason=why
        )
    result = run()
    logger.info("vllm_probe_ran", available=result.available, version=result.version, uid=result.uid)
    if directory and result.available:
        why = store(directory, inputs, result)
        if why:
            logger.info("vllm_probe_cache_not_written", reason=why)
    return result
