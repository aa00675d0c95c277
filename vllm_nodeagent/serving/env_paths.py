"""doctor's ``vllm.env.*`` checks: ``[vllm] env`` entries that make the loader or Python run code from a path
(PYTHONPATH, LD_PRELOAD, LD_LIBRARY_PATH). Code there runs as the vLLM user at the next start, so a path that
someone other than root and the vLLM user can change is a FAIL naming the key and the path
(host.untrusted.others_can_change has the rule); a relative or empty entry (the working directory) too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from vllm_nodeagent.checks.base import CheckResult
from vllm_nodeagent.checks.status import Status
from vllm_nodeagent.host.untrusted import others_can_change

if TYPE_CHECKING:
    from vllm_nodeagent.config import VllmConfig
    from vllm_nodeagent.host import Host

CODE_PATH_KEYS = ("PYTHONPATH", "LD_PRELOAD", "LD_LIBRARY_PATH")


def entries(key: str, value: str) -> list[str]:
    """PYTHONPATH and LD_LIBRARY_PATH are ":"-lists (an empty entry is the working directory); ld.so(8) splits
    LD_PRELOAD on spaces and colons."""
    if key == "LD_PRELOAD":
        return [e for e in value.replace(":", " ").split(" ") if e]
    return value.split(":")


def env_path_checks(host: Host, cfg: VllmConfig, vllm_uid: Optional[int]) -> list[CheckResult]:
    trusted = {vllm_uid} if vllm_uid is not None else set()
    out: list[CheckResult] = []
    for key in CODE_PATH_KEYS:
        value = cfg.env.get(key)
        if value is None:
            continue
        cid = f"vllm.env.{key}"
        problems = []
        for entry in entries(key, value):
            if not entry.startswith("/"):
                problems.append(f"{entry or '(empty)'}: a relative entry (the working directory of vLLM)")
                continue
            why = others_can_change(str(host.root), entry, trusted)
            if why:
                problems.append(f"{entry}: {why}")
        if problems:
            hint = (
                f"[vllm] env {key}: code there runs as the vLLM user; use directories only root (or the vLLM "
                "user) can write: " + "; ".join(problems)
            )
            out.append(CheckResult(cid, Status.FAIL, value, "paths only root or the vLLM user can change", hint))
        else:
            out.append(CheckResult(cid, Status.PASS, value, "paths only root or the vLLM user can change"))
    return out
