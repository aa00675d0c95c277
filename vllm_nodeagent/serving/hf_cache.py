"""Where vLLM's Hugging Face hub cache is: huggingface_hub's precedence (HF_HUB_CACHE ... ~/.cache/huggingface/hub)
with ``~`` as vLLM expands it — the HOME it gets, the vLLM user's as the host's accounts say — and, for the agent's
own reads, the path where it lies here (inside the tree under ``--root``). One answer for prewarm (the command and
the daemon's warm-up), doctor's storage checks and the compile-cache fingerprint. Kept out of prewarm/ so doctor
imports no prewarm module before a model is found (tests/test_imports.py).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Optional

from vllm_nodeagent.host import Host, HostError
from vllm_nodeagent.host.accounts import Accounts

if TYPE_CHECKING:
    from vllm_nodeagent.config import Config


def expand_home(path: str, home: Optional[str] = None, accounts: Optional[Accounts] = None) -> str:
    """``~`` and ``~/...`` with ``home``, ``~name/...`` with ``name``'s home in ``accounts``, as expanduser does for
    the process itself (an unknown ``~name`` stays as written). Without ``home`` / ``accounts``: the calling
    process's (os.path.expanduser)."""
    if not path.startswith("~"):
        return path
    name, slash, rest = path[1:].partition("/")
    if (not name and home is None) or (name and accounts is None):
        return os.path.expanduser(path)
    base = home
    if name and accounts is not None:
        try:
            account = accounts.user(name)
        except (HostError, ValueError):  # an unsafe or damaged /etc/passwd: no one is known
            account = None
        base = account.home if account is not None else None
    if base is None:
        return path
    return (base.rstrip("/") + (f"/{rest}" if slash else "")) or "/"


def hf_cache_dir(
    env: Optional[Mapping[str, str]] = None, home: Optional[str] = None, accounts: Optional[Accounts] = None
) -> str:
    """The Hugging Face hub cache, as huggingface_hub finds it: HF_HUB_CACHE, HUGGINGFACE_HUB_CACHE (legacy),
    HF_HOME/hub, XDG_CACHE_HOME/huggingface/hub, ~/.cache/huggingface/hub; a path of the host (not re-rooted),
    ``~`` expanded by ``expand_home`` (``home``: whose ``~``; default the calling process's)."""
    e = os.environ if env is None else env

    def expand(path: str) -> str:
        return expand_home(path, home, accounts)

    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if e.get(key):
            return expand(e[key])
    if e.get("HF_HOME"):
        return os.path.join(expand(e["HF_HOME"]), "hub")
    if e.get("XDG_CACHE_HOME"):
        return os.path.join(expand(e["XDG_CACHE_HOME"]), "huggingface", "hub")
    return os.path.join(expand("~"), ".cache", "huggingface", "hub")


def vllm_hf_cache(config: Optional[Config], host: Host, env: Optional[Mapping[str, str]] = None) -> str:
    """The hub cache the configured vLLM uses (hf_cache_dir of ``env``), where it lies here. ``~`` is the HOME
    vLLM gets (serving/env.child_env): ``[vllm] env`` HOME, else the home of ``[vllm] user`` in the host's accounts
    (the tree's /etc/passwd under --root); ``~name`` is name's home there. Without a ``[vllm]`` section or a user
    the accounts know: HOME of ``env`` (the calling process's, as before). Under --root the path is mapped into
    the tree (Host.path: links resolved chroot-style); a relative one is used as given."""
    e = os.environ if env is None else env
    accounts = Accounts.of(host)
    vllm = config.vllm if config is not None else None
    home = vllm.env.get("HOME", "") if vllm is not None else ""
    if not home and vllm is not None and vllm.user:
        try:
            account = accounts.user(vllm.user)
        except (HostError, ValueError):  # unreadable or unsafe accounts: the start says so; here, the fallback
            account = None
        home = account.home if account is not None else ""
    cache = hf_cache_dir(e, home or e.get("HOME") or None, accounts)
    if not cache.startswith("/"):
        return cache
    try:
        return str(host.path(cache))
    except HostError:  # a link loop inside the tree: the cache is not there; its lookups say "not in the cache"
        return str(host.root).rstrip("/") + cache
