"""Red team, bytecode: root's compileall must not run an interpreter the vLLM user (or any other user) can change.

The vLLM user's venv lives in its home: ``venv/bin/python`` is a link in a directory that user owns, so it can make
it any program. A ``.pth`` in its site-packages adds a root-owned directory with a missing ``.pyc`` to sys.path, so
root has something to compile. Before the fix, ``apply --only vllm.bytecode`` ran that program as root.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest
from fakehost import real_accounts
from hostile_user import as_user, attacker_user

from vllm_nodeagent.config import parse_config
from vllm_nodeagent.host import Host
from vllm_nodeagent.serving import bytecode as bc
from vllm_nodeagent.settings import bytecode, engine
from vllm_nodeagent.settings.journal import Journal

SYSTEM_PY = "/usr/bin/python3"
STATE = "/var/lib/vllm-nodeagent"
pytestmark = pytest.mark.skipif(not os.path.exists(SYSTEM_PY), reason="needs /usr/bin/python3")

TROJAN = """#!/bin/sh
id -u >> {log}
exec {py} "$@"
"""


def test_root_never_runs_an_interpreter_the_vllm_user_can_swap(tmp_path: Path) -> None:
    with attacker_user() as atk:
        home = Path(atk.pw_dir)
        as_user(atk, [SYSTEM_PY, "-m", "venv", "--without-pip", str(home / "venv")])
        site = next((home / "venv" / "lib").glob("python3*/site-packages"))
        rootlib = Path(tempfile.mkdtemp(prefix="vna-rootlib-", dir="/tmp"))  # root's, 0700 -> 0755
        try:
            rootlib.chmod(0o755)
            for i in range(60):  # no bytecode, more than the 2 % share: root has a reason to compile
                (rootlib / f"rootmod{i}.py").write_text(f"R = {i}\n")
            log = home / "ran-as"
            as_user(atk, ["sh", "-c", f"echo {rootlib} > {site}/evil.pth"])
            py = home / "venv" / "bin" / "python"
            trojan = TROJAN.format(log=log, py=home / "venv" / "bin" / "python3")  # python3: the venv's link
            as_user(atk, ["sh", "-c", f"rm {py} && cat > {py} <<'X'\n{trojan}X\nchmod 755 {py}"])
            cfg = parse_config(f'[vllm]\ncommand = ["{py}", "-m", "vllm"]\nmodel = "m"\nuser = "{atk.pw_name}"\n', "c")
            assert cfg.vllm is not None
            host = Host(tmp_path / "root")
            real_accounts(tmp_path / "root", atk.pw_name)  # the tree's accounts: the attacker's real uid
            (tmp_path / "root" / STATE.lstrip("/")).mkdir(parents=True)
            t = bytecode.Bytecode(host, cfg.vllm, STATE)
            env, _ = t._environment()
            assert str(rootlib) in env.path  # the attacker steered root's work there
            journal = Journal(host, STATE)
            with journal.locked():
                [o] = engine.apply([t], journal, log_results=False)
            ran_as = log.read_text().split() if log.exists() else []
            assert "0" not in ran_as, f"root ran the vLLM user's interpreter: {o}"
            assert not (rootlib / "__pycache__").exists()
            assert o.status == engine.FAILED  # left, and said: doctor keeps warning
            report = bc.compile_missing(str(py), [str(rootlib / "rootmod1.py")])
            assert report.compiled_by == {} and "interpreter" in report.refused[-1]
            assert f"{atk.pw_dir} is owned by uid {atk.pw_uid}" in report.refused[-1]
            # the attacker's own files are still compiled, by the attacker with its own interpreter
            as_user(atk, ["sh", "-c", f"echo 'A = 1' > {site}/own.py"])
            report = bc.compile_missing(str(py), [str(site / "own.py")])
            assert report.compiled_by == {f"uid {atk.pw_uid}": 1} and not report.refused
            assert "0" not in log.read_text().split()
        finally:
            subprocess.run(["rm", "-rf", str(rootlib)], check=False)
