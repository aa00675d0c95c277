"""Where a model id is looked up (issue 26, "--root complete"): in the hub cache the configured vLLM uses, ``~`` being
the home of ``[vllm] user`` as the host's accounts say, and under ``--root`` inside the tree. Before, ``~`` was the
calling process's home (root's /root) and the path was the machine's, whatever --root said.

The CLI runs in a new process with HOME at a decoy home (outside the tree) that holds the same model id: what is
warmed must come from the tree, from the vLLM user's home there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vllm_nodeagent.config import Config, VllmConfig
from vllm_nodeagent.host import Host
from vllm_nodeagent.host.accounts import Accounts
from vllm_nodeagent.prewarm.targets import expand_home, hf_cache_dir, vllm_hf_cache
from vllm_nodeagent.serving.compile_cache import model_identity

REPO = Path(__file__).resolve().parent.parent
REV = "0123456789abcdef0123456789abcdef01234567"
HF_VARS = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME")


def snapshot(hub: Path, weights: str = "model.safetensors") -> Path:
    """models--org--name in ``hub`` as huggingface_hub lays it out: refs/main, a blob, a snapshot linking to it."""
    repo = hub / "models--org--name"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / "b1").write_bytes(os.urandom(8192))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REV)
    (repo / "snapshots" / REV).mkdir(parents=True)
    (repo / "snapshots" / REV / weights).symlink_to("../../blobs/b1")
    return repo / "snapshots" / REV / weights


def tree(tmp_path: Path) -> Path:
    """A --root tree: /etc/passwd with vllm (home /home/vllm) and other (home /srv/other), and /proc/meminfo."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text(
        "root:x:0:0::/root:/bin/sh\nvllm:x:990:990::/home/vllm:/bin/false\nother:x:991:991::/srv/other:/bin/false\n"
    )
    (root / "proc").mkdir()
    (root / "proc" / "meminfo").write_text("MemTotal: 8388608 kB\nMemAvailable: 4194304 kB\n")
    return root


def prewarm(tmp_path: Path, root: Path, config: str, *targets: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    """``prewarm --json`` as the CLI, HOME at a decoy home holding models--org--name too, no HF variable set."""
    decoy = tmp_path / "decoy-home"
    if not decoy.exists():
        snapshot(decoy / ".cache" / "huggingface" / "hub", "decoy.safetensors")
    cfg = tmp_path / "config.toml"
    cfg.write_text(config)
    cfg.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if k not in HF_VARS}
    env.update(HOME=str(decoy), PYTHONPATH=str(REPO))
    argv = [sys.executable, "-m", "vllm_nodeagent.cli", "--root", str(root), "--config", str(cfg)]
    proc = subprocess.run([*argv, "prewarm", "--json", *targets], capture_output=True, text=True, env=env, cwd="/")
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc, json.loads(proc.stdout) if proc.stdout.startswith("{") else {}


VLLM = '[prewarm]\nstack = false\n[vllm]\nmodel = "org/name"\nuser = "vllm"\n'


@pytest.mark.parametrize(
    ("env", "hub"),
    [
        ("", "home/vllm/.cache/huggingface/hub"),  # the default: ~/.cache/huggingface/hub, ~ the vLLM user's
        ('HF_HOME = "~/hf"', "home/vllm/hf/hub"),
        ('XDG_CACHE_HOME = "~/xdg"', "home/vllm/xdg/huggingface/hub"),
        ('HF_HUB_CACHE = "~other/hub"', "srv/other/hub"),  # ~name: that user's home in the tree's /etc/passwd
        ('HF_HUB_CACHE = "/data/hub"', "data/hub"),  # an absolute path: the tree's
        ('HOME = "/opt/vhome"', "opt/vhome/.cache/huggingface/hub"),  # the HOME vLLM gets: [vllm] env's first
    ],
)
def test_prewarm_finds_the_configured_model_in_the_vllm_users_cache_in_the_tree(
    tmp_path: Path, env: str, hub: str
) -> None:
    root = tree(tmp_path)
    wanted = snapshot(root / hub)
    proc, out = prewarm(tmp_path, root, VLLM + (f"[vllm.env]\n{env}\n" if env else ""))
    assert proc.returncode == 0, proc.stderr
    assert out["paths"] == [str(wanted)], out
    assert not any("decoy" in p for p in out["paths"])


def test_a_model_only_in_the_callers_home_is_not_found_and_the_fault_names_the_trees_cache(tmp_path: Path) -> None:
    """The model only in the decoy (the caller's) home, not in the vLLM user's cache: not found, the tree's named."""
    root = tree(tmp_path)
    proc, out = prewarm(tmp_path, root, VLLM)
    assert proc.returncode == 1 and out["files"] == 0, proc.stderr
    assert f"not in the Hugging Face cache {root}/home/vllm/.cache/huggingface/hub" in proc.stderr, proc.stderr
    assert "decoy" not in proc.stdout + proc.stderr


def test_without_a_vllm_section_the_callers_home_inside_the_tree(tmp_path: Path) -> None:
    """No [vllm]: ~ is the calling process's home (HOME), as before, but under --root the tree's copy of it; and a
    model id named on the command line the same (the process environment, docs/prewarm.md)."""
    root = tree(tmp_path)
    decoy = tmp_path / "decoy-home"
    wanted = snapshot(root / str(decoy).lstrip("/") / ".cache" / "huggingface" / "hub")
    for config, targets in (('[prewarm]\npaths = ["org/name"]\n', ()), ("", ("org/name",))):
        proc, out = prewarm(tmp_path, root, config, *targets)
        assert proc.returncode == 0, proc.stderr
        assert out["paths"] == [str(wanted)], out


def test_the_daemons_warm_up_and_the_command_ask_the_same_function(tmp_path: Path) -> None:
    """vllm_hf_cache: the vLLM user's ~ from the tree's accounts, mapped into the tree; an unknown user or none:
    HOME of the environment given."""
    root = tree(tmp_path)
    host = Host(root)
    cfg = Config("-", vllm=VllmConfig(user="vllm"))
    assert vllm_hf_cache(cfg, host, {}) == f"{root}/home/vllm/.cache/huggingface/hub"
    (root / "home" / "vllm").mkdir(parents=True)
    (root / "elsewhere").mkdir()
    (root / "home" / "vllm" / ".cache").symlink_to("/elsewhere")  # an absolute link: restarts at the tree's root
    assert vllm_hf_cache(cfg, host, {}) == f"{root}/elsewhere/huggingface/hub"
    home = {"HOME": "/home/me"}
    for unknown in (Config("-", vllm=VllmConfig(user="ghost")), Config("-"), None):
        assert vllm_hf_cache(unknown, host, home) == f"{root}/home/me/.cache/huggingface/hub"
    assert vllm_hf_cache(cfg, Host("/"), {"HF_HUB_CACHE": "/x/hub"}) == "/x/hub"


def test_expand_home() -> None:
    accounts = Accounts("/nonexistent-tree")  # no /etc/passwd there: nobody is known
    assert expand_home("~", "/home/v", accounts) == "/home/v"
    assert expand_home("~/a/b", "/home/v/", accounts) == "/home/v/a/b"
    assert expand_home("~/a", "/", accounts) == "/a" and expand_home("~", "/", accounts) == "/"
    assert expand_home("~ghost/a", "/home/v", accounts) == "~ghost/a"  # unknown: as written (expanduser's way)
    assert expand_home("/abs/~x", "/home/v", accounts) == "/abs/~x"
    assert expand_home("~/a") == os.path.expanduser("~/a")
    assert hf_cache_dir({"HF_HOME": "~/hf"}, "/home/v") == "/home/v/hf/hub"
    assert hf_cache_dir({}, "/home/v") == "/home/v/.cache/huggingface/hub"


def test_the_compile_cache_fingerprint_expands_tilde_with_the_childs_home(tmp_path: Path) -> None:
    """model_identity (the compile-cache fingerprint's model field) reads refs/main where vLLM's hub is: ``~`` in
    HF_HOME is the child's HOME (before: the agent's own, root's), ``~name`` the tree's account; under --root."""
    root = tree(tmp_path)
    for hub in ("home/vllm/hf/hub", "srv/other/hub"):
        snapshot(root / hub)
    host = Host(root)
    assert model_identity("org/name", [], {"HOME": "/home/vllm", "HF_HOME": "~/hf"}, host) == f"org/name@{REV}"
    assert model_identity("org/name", [], {"HOME": "/", "HF_HUB_CACHE": "~other/hub"}, host) == f"org/name@{REV}"
    assert model_identity("org/name", [], {"HOME": "/home/vllm"}, host).endswith("(not in the HF cache)")
