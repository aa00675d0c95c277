"""What the running serving side leaves on disk for doctor and for a restarted agent: the vLLM pid file and the
plan it was started with (doctor compares the live binding with that plan, not with a re-plan; a restarted
agent ends a vLLM its killed predecessor left, identified by the plan's start time).

In the split layout both files lie in the vLLM user's runtime dir: whatever is in them is hostile input. They are
read with ``read_capped`` (no symlink, regular file, owner root or the vLLM user, size cap), the plan is
depth-checked before parsing and schema-checked after (every field, its type), and a live pid is used only when
the process is the vLLM that was recorded (``identify``: its real uid is the vLLM user's, its start time the
recorded one). Every refusal is a one-line ``StateFileError``; doctor shows it as one WARN line.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from vllm_nodeagent.host import Host, HostError
from vllm_nodeagent.host.parse import json_depth
from vllm_nodeagent.host.proc import ProcError, Procfs
from vllm_nodeagent.host.untrusted import UntrustedFileError, read_capped

if TYPE_CHECKING:
    from vllm_nodeagent.serving.plan import LaunchPlan

PID_FILE = "vllm.pid"
PLAN_FILE = "vllm-plan.json"  # what the daemon chose; doctor reads it instead of re-planning
MAX_PID_BYTES = 32
MAX_PLAN_BYTES = 256 * 1024  # a plan of 1,024 GPUs with notes is ~60 kB
MAX_PLAN_DEPTH = 3  # {"pin": {"0": [1, 2]}}
MAX_PID = 1 << 22  # PID_MAX_LIMIT

# Every field of the plan file and its type ("pid" and "start_time" are the file's, not the LaunchPlan's).
PLAN_SCHEMA: dict[str, str] = {
    "argv": "list[str]",
    "numa_nodes": "list[int]",
    "cpus": "list[int]",
    "gpus": "list[int]",
    "gpu_nodes": "list[int]",
    "binding": "str",
    "policy": "str",
    "mempolicy": "str",
    "user": "str",
    "uid": "int",
    "gid": "int",
    "groups": "list[int]",
    "switch_user": "bool",
    "pin": "dict[str,list[int]]",
    "notes": "list[str]",
    "pid": "int",
    "start_time": "int",
}
OPTIONAL = {"start_time"}  # plans written before issue 22


class StateFileError(Exception):
    """A pid or plan file that is refused, or a pid that is not the recorded vLLM; one line naming it."""


# -- writing (the daemon) ---------------------------------------------------------------------------------------
def _write(path: str, data: bytes) -> None:
    try:
        Host("/").write_file_atomic(path, data, 0o644)  # path is already under --root (Host.path)
    except HostError as exc:
        raise OSError(exc.errno, f"{path}: {exc.strerror}") from None


def state_dir_problem(host: Host, state_dir: str) -> str:
    """ "" when ``state_dir`` (a host path) is a directory only root can write (made 0755 if missing), else why."""
    try:
        os.close(host.open_dir(state_dir, "state dir", create=0o755))
    except HostError as exc:
        return str(exc)
    return ""


def write_pid_file(path: str, pid: int) -> None:
    _write(path, f"{pid}\n".encode())


def write_plan_file(state_dir: str, launch_plan: LaunchPlan, pid: int, start_time: int = 0) -> None:
    """What the daemon chose for the running vLLM (doctor compares the live binding with this, not a re-plan);
    ``start_time`` (clock ticks, /proc/<pid>/stat) tells this vLLM from a later process with the same pid."""
    data = dict(launch_plan.to_json(), pid=pid, start_time=start_time)
    data.pop("env", None)  # may carry secrets from [vllm] env
    _write(os.path.join(state_dir, PLAN_FILE), json.dumps(data).encode())


# -- reading (hostile input) ------------------------------------------------------------------------------------
def _owners(owners: Optional[set[int]]) -> set[int]:
    return {0, os.geteuid()} | (owners or set())


def read_pid(path: str, owners: Optional[set[int]] = None) -> Optional[int]:
    """The pid a pid file holds (None when absent); StateFileError for a refused file or other content."""
    try:
        data = read_capped(path, MAX_PID_BYTES, _owners(owners))
    except UntrustedFileError as exc:
        raise StateFileError(str(exc)) from None
    if data is None:
        return None
    text = data.decode("ascii", errors="replace").strip()
    if not text.isascii() or not text.isdigit() or not 0 < int(text) < MAX_PID:
        raise StateFileError(f"{path} does not hold one process id: refused")
    return int(text)


def read_pid_file(state_dir: str, owners: Optional[set[int]] = None, procfs: Optional[Procfs] = None) -> Optional[int]:
    """The pid in ``state_dir``'s pid file when that process is alive; None when absent or not running.
    Raises StateFileError for a refused file or content that is not one pid."""
    pid = read_pid(os.path.join(state_dir, PID_FILE), owners)
    return pid if pid is not None and (procfs or Procfs()).exists(pid) else None


def remove_state_file(path: str) -> None:
    try:
        Host("/").remove(path)
    except HostError:
        return


def read_plan_file(state_dir: str, pid: int, owners: Optional[set[int]] = None) -> Optional[dict[str, Any]]:
    """The daemon's plan for ``pid``: None when absent or written for another pid. Raises StateFileError for a
    refused file (see read_capped), JSON nested deeper than a plan is, or a field missing, unknown or mistyped."""
    path = os.path.join(state_dir, PLAN_FILE)
    try:
        raw = read_capped(path, MAX_PLAN_BYTES, _owners(owners))
    except UntrustedFileError as exc:
        raise StateFileError(str(exc)) from None
    if raw is None:
        return None
    text = raw.decode("utf-8", errors="replace")
    if json_depth(text) > MAX_PLAN_DEPTH:
        raise StateFileError(f"{path} is nested deeper than a plan ({MAX_PLAN_DEPTH} levels): refused")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StateFileError(f"{path} is not JSON ({exc.msg}, line {exc.lineno}): refused") from None
    except ValueError:  # surrogates and the like
        raise StateFileError(f"{path} is not JSON: refused") from None
    problem = plan_problem(data)
    if problem:
        raise StateFileError(f"{path}: {problem}: refused")
    return data if data["pid"] == pid else None


def _is(value: Any, kind: str) -> bool:
    if kind == "int":
        return type(value) is int and 0 <= value < 1 << 32
    if kind == "str":
        return type(value) is str
    if kind == "bool":
        return type(value) is bool
    if kind.startswith("list["):
        inner = kind[5:-1]
        return type(value) is list and all(_is(v, inner) for v in value)
    if kind.startswith("dict[str,"):
        inner = kind[9:-1]
        return type(value) is dict and all(type(k) is str and _is(v, inner) for k, v in value.items())
    return False


def plan_problem(data: Any) -> str:
    """What is wrong with a parsed plan file ("" = nothing): every field present, none unknown, each its type."""
    if type(data) is not dict:
        return f"a JSON {type(data).__name__}, not an object"
    missing = sorted(set(PLAN_SCHEMA) - OPTIONAL - set(data))
    if missing:
        return f"field {missing[0]!r} missing"
    unknown = sorted(str(k) for k in set(data) - set(PLAN_SCHEMA))
    if unknown:
        return f"unknown field {unknown[0][:40]!r}"
    for key, kind in PLAN_SCHEMA.items():
        if key in data and not _is(data[key], kind):
            return f"field {key!r} is not {kind}"
    if not all(k.isdigit() for k in data["pin"]):
        return "field 'pin' has a key that is not a GPU index"
    return ""


@dataclass
class Running:
    """doctor's view of the live vLLM: its pid and plan when both are trusted; ``problem``: why not (one line)."""

    pid: Optional[int] = None
    plan: Optional[dict[str, Any]] = None
    state_dir: str = ""
    problem: str = ""


def identify(procfs: Procfs, pid: int, plan: Optional[dict[str, Any]], vllm_uid: Optional[int]) -> str:
    """Why live ``pid`` is not the vLLM that was recorded ("" = it is): its real uid must be the vLLM user's
    (``vllm_uid``, from --root's passwd) and, when the plan recorded one, its start time the recorded one."""
    try:
        ident = procfs.identity(pid)
    except ProcError as exc:
        return str(exc)
    if vllm_uid is not None and ident.uid != vllm_uid:
        return f"pid {pid} runs as uid {ident.uid}, not as the vLLM user (uid {vllm_uid}): not vLLM, not audited"
    if plan is not None:
        if plan["uid"] != ident.uid:
            return f"pid {pid} runs as uid {ident.uid}, the plan says uid {plan['uid']}: not audited"
        recorded = plan.get("start_time", 0)
        if recorded and recorded != ident.start_time:
            return (
                f"pid {pid} started at tick {ident.start_time}, the recorded vLLM at tick {recorded}: "
                "a stale pid file (the pid was reused), not audited"
            )
    return ""


def find_running(state_dirs: list[str], vllm_uid: Optional[int], procfs: Optional[Procfs] = None) -> Running:
    """The live, identified vLLM from the first of ``state_dirs`` (real paths) whose pid file names a live
    process; a refused file or a process that is not the recorded vLLM gives ``problem`` and no pid."""
    fs = procfs or Procfs()
    owners = {vllm_uid} if vllm_uid is not None else set()
    for d in state_dirs:
        try:
            pid = read_pid_file(d, owners, fs)
            if pid is None:
                continue
            plan = read_plan_file(d, pid, owners)
        except StateFileError as exc:
            return Running(state_dir=d, problem=str(exc))
        why = identify(fs, pid, plan, vllm_uid)
        if why:
            return Running(state_dir=d, problem=why)
        return Running(pid, plan, d)
    return Running()
