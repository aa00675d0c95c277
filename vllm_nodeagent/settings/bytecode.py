"""``vllm.bytecode``: the vLLM environment's importable ``.py`` files have valid bytecode for its interpreter.

A setting like the others (apply, doctor, drift, one result line): read = how many files lack a valid cache file
(serving/bytecode.py counts them), write = compile them as their owner. The count is remembered in the state dir
with the environment's fingerprint, so apply and the daemon's start redo nothing until the environment changes
(a pip install, an upgrade, another interpreter or path). Revert leaves the bytecode: it is a cache of the source,
the same code runs with or without it.
"""

from __future__ import annotations

import json
import re
import time
from typing import Optional

from vllm_nodeagent.config import VllmConfig
from vllm_nodeagent.host import Host, HostError
from vllm_nodeagent.serving import bytecode as bc
from vllm_nodeagent.serving.args import resolve_python
from vllm_nodeagent.serving.env import SAFE_PATH, LaunchError, RunAs, child_env, resolve_user
from vllm_nodeagent.settings.base import (
    BuildInputs,
    Family,
    NotApplicable,
    Tunable,
    TunableDefaults,
    TunableError,
    only_params,
)

STATE_FILE = "bytecode.json"
WARN_SHARE = 0.02  # "a few percent": below this the in-memory compiles cost little
_COUNT = re.compile(r"(\d+) of (\d+) files without bytecode")


class Bytecode(TunableDefaults):
    family = "vllm"
    id = "vllm.bytecode"
    owner: Optional[str] = None
    is_cache = True  # revert leaves it in place (engine.revert_one)
    advisory = True  # doctor: a WARN, not a FAIL (vLLM serves without it, only starts slower)

    def __init__(self, host: Host, cfg: Optional[VllmConfig], state_dir: str) -> None:
        self.host = host
        self.cfg = cfg
        self.state_path = state_dir.rstrip("/") + "/" + STATE_FILE
        self._env: Optional[bc.PyEnv] = None
        self._who: Optional[RunAs] = None
        self._scan: Optional[bc.Scan] = None
        self._from_state = ""  # when read() answered from the state file: when that count was taken
        self._fp = ""

    def params(self) -> dict[str, str]:
        return {}

    def _environment(self) -> tuple[bc.PyEnv, RunAs]:
        if self._env is not None and self._who is not None:
            return self._env, self._who
        if self.cfg is None:
            raise NotApplicable("no [vllm] section")
        try:
            who = resolve_user(self.cfg.user, self.host)
        except LaunchError as exc:
            raise NotApplicable(str(exc)) from None
        env = child_env(self.cfg, who, [])
        python, why = resolve_python(list(self.cfg.command), self.cfg.python, env.get("PATH", SAFE_PATH))
        if not python:
            raise NotApplicable(f"no vLLM interpreter: {why}")
        try:
            found = bc.env_info(python, env, who)
        except bc.BytecodeError as exc:
            raise TunableError(str(exc)) from None
        if found.pycache_prefix:
            raise NotApplicable(f"PYTHONPYCACHEPREFIX={found.pycache_prefix}: bytecode is kept outside the tree")
        self._env, self._who = found, who
        return found, who

    def _stored(self) -> dict[str, object]:
        try:
            doc = json.loads(self.host.read(self.state_path)[:65536])
        except (HostError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def read(self) -> str:
        env, who = self._environment()
        self._fp = bc.fingerprint(env)
        stored = self._stored()
        if stored.get("fingerprint") == self._fp and isinstance(stored.get("current"), str):
            self._from_state = time.strftime("%Y-%m-%d %H:%M", time.gmtime(float(str(stored.get("at", 0)))))
            return str(stored["current"])
        self._from_state = ""
        self._scan = bc.scan(env, who)
        return self._scan.summary()

    def desired(self) -> str:
        return f"<= {WARN_SHARE:.0%} without bytecode"

    def compliant(self, current: str) -> bool:
        m = _COUNT.fullmatch(current)
        if not m:
            return False
        # Compiled by the agent for this very environment: what is left does not compile (py2 test files).
        if int(m.group(1)) <= WARN_SHARE * int(m.group(2)):
            return True
        stored = self._stored()
        return bool(self._from_state) and bool(stored.get("compiled")) and not stored.get("refused")

    def target(self, current: str) -> str:
        return "compiled"

    def write(self, value: str) -> None:
        if value != "compiled":
            return  # a put-back or revert of a cache: the bytecode stays (the same code runs)
        env, who = self._environment()
        missing = self._scan.missing if self._scan is not None else bc.scan(env, who).missing
        report = bc.compile_missing(env.python, missing)
        if report.errors:
            raise TunableError(f"compileall: {report.errors[0]}")
        after = bc.scan(env, who)
        self._scan = after
        doc = {
            "fingerprint": bc.fingerprint(env),
            "current": after.summary(),
            "compiled": True,
            "at": time.time(),
            "python": env.python,
            "by": report.compiled_by,
            "refused": report.refused[:20],
        }
        try:
            self.host.write_file_atomic(self.state_path, json.dumps(doc).encode(), mode=0o644)
        except HostError as exc:
            raise TunableError(f"compiled, but cannot remember it: {exc}") from None

    def note(self, current: str) -> str:
        if self._from_state:
            refused = self._stored().get("refused")
            left = f"; left alone: {refused[0]}" if isinstance(refused, list) and refused else ""
            return f"as counted {self._from_state} UTC; the environment is unchanged since{left}"
        if self._scan is not None and self._scan.missing:
            who = self._who.name if self._who else "the vLLM user"
            can = len(self._scan.missing) - self._scan.unwritable
            return (
                f"{who} can write {can} of them (compiled again in memory at every start otherwise)"
                if can
                else f"{who} cannot write them: each start compiles them again in memory"
            )
        return ""

    def hint(self) -> str:
        return f"vllm-nodeagent apply --only {self.id}  (compiles them with the vLLM interpreter's compileall)"


def build(inputs: BuildInputs) -> list[Tunable]:
    from vllm_nodeagent.serving.plan import something_to_launch

    cfg = inputs.config.vllm
    if cfg is None or not cfg.bytecode or not something_to_launch(cfg):
        return []  # no vLLM to serve: nothing to compile
    return [Bytecode(inputs.host, cfg, inputs.config.agent.state_dir)]


def rebuild(host: Host, nvml: object, params: dict[str, str]) -> Tunable:
    only_params(params)
    return Bytecode(host, None, "/var/lib/vllm-nodeagent")


FAMILY = Family(Bytecode.family, build, rebuild)
