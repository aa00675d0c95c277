"""[prewarm] stack_learned against the real vLLM CPU venv ($VLLM_VENV, issue 23): the venv's cache is dropped
(posix_fadvise DONTNEED on its own files; nothing of it is written), vLLM's API server module is imported as
``nobody``, the daemon's learning step keeps what that import left resident, and the next warm-up before a start
reads those pages and not the rest. Residency by util-linux ``fincore`` (mincore), not by the agent's word."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from test_bytecode_stack_real import VENV, fincore, pytestmark, site_packages
from test_prewarm_learned import agent_root, loop_for
from test_prewarm_stack import _Log

from vllm_nodeagent.config import parse_config
from vllm_nodeagent.daemon.prewarm_step import learn_after_ready, prewarm_before_start
from vllm_nodeagent.prewarm.learned import PAGES_FILE

__all__ = ["pytestmark"]  # the real-vLLM leg's marks and skips, as its sibling's


def drop_tree(top: Path) -> None:
    """Drop the tree's pages from the page cache. A venv pip has just written (CI builds it in the same run) has
    dirty pages, which DONTNEED leaves: written back first."""
    os.sync()
    for d, _, names in os.walk(top):
        for n in names:
            p = os.path.join(d, n)
            if os.path.islink(p) or not os.path.isfile(p):
                continue
            fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def test_the_pages_a_real_vllm_import_faults_in_are_learned_and_read_back_before_the_start(tmp_path: Path) -> None:
    sp = site_packages()
    api_pyc = next((sp / "vllm/entrypoints/openai/__pycache__").glob("api_server.*.pyc"))
    libtorch = sp / "torch/lib/libtorch_cpu.so"
    unused = sorted((sp / "torch/utils/tensorboard/__pycache__").glob("*.pyc"))  # never imported by a start
    assert unused and libtorch.exists()
    root, state = agent_root(tmp_path)
    text = (
        f'[agent]\nstate_dir = "{state}"\n[prewarm]\ninclude_model = false\nstack_learned = true\n'
        f'[vllm]\ncommand = ["{VENV}/bin/python", "-m", "vllm.entrypoints.openai.api_server"]\nuser = "nobody"\n'
        f'model = "{tmp_path / "model"}"\n'
    )

    drop_tree(sp)
    assert fincore([api_pyc, libtorch, *unused])[str(api_pyc)] == 0, "the cache drop did not take"
    subprocess.run(
        [f"{VENV}/bin/python", "-c", "import vllm.entrypoints.openai.api_server"],
        env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"}, user="nobody", cwd="/", check=True,
        capture_output=True, timeout=600,
    )  # fmt: skip
    log = _Log()
    thread = learn_after_ready(loop_for(root, parse_config(text, "c"), log, []), os.getpid())
    assert thread is not None
    thread.join(300)
    doc = json.loads((root / str(state).lstrip("/") / PAGES_FILE).read_text())
    learned = {e[0]: sum(n for _, n in e[5]) for e in doc["files"]}
    assert str(api_pyc) in learned
    assert 0 < learned[str(libtorch)] < libtorch.stat().st_size  # the pages the import touched, not all of it
    assert not {str(p) for p in unused} & set(learned)
    (done,) = [kw for ev, kw in log.events if ev == "prewarm_learned_pages"]
    assert done["files"] == len(learned) and done["bytes"] == sum(learned.values())

    drop_tree(sp)
    log2 = _Log()
    prewarm_before_start(loop_for(root, parse_config(text, "c"), log2, []), lambda: "imports done")
    res = fincore([api_pyc, libtorch, *unused])
    assert res[str(api_pyc)] >= api_pyc.stat().st_size
    # the learned ranges of the library, no more than a few pages of the kernel's own around them. Below: CI runs
    # the VM bed beside this leg, and its reclaim took 50 pages (0.1 %) back between the read and fincore once
    # (stop 31); the agent reads again what is gone when it looks (prewarm.reclaimed), fincore looks later.
    lib = learned[str(libtorch)]
    assert lib - lib // 100 <= res[str(libtorch)] < lib + (1 << 20)
    assert all(res[str(p)] == 0 for p in unused), res
    (stack,) = [kw for ev, kw in log2.events if ev == "prewarm_done" and kw.get("part") == "stack"]
    assert stack["files"] == len(learned) and stack["resident_bytes"] == stack["total_bytes"] == done["bytes"]
