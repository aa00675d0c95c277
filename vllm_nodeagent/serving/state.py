"""What the running serving side leaves on disk for doctor: the vLLM pid file and the plan it was started with
(doctor compares the live binding with that plan, not with a re-plan).
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from vllm_nodeagent.serving.plan import LaunchPlan

PID_FILE = "vllm.pid"
PLAN_FILE = "vllm-plan.json"  # what the daemon chose; doctor reads it instead of re-planning


def write_plan_file(state_dir: str, launch_plan: LaunchPlan, pid: int) -> None:
    """What the daemon chose for the running vLLM (doctor compares the live binding with this, not a re-plan)."""
    path = os.path.join(state_dir, PLAN_FILE)
    data = dict(launch_plan.to_json(), pid=pid)
    data.pop("env", None)  # may carry secrets from [vllm] env
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh)
    os.replace(tmp, path)


def read_plan_file(state_dir: str, pid: int) -> Optional[dict[str, Any]]:
    """The daemon's plan for ``pid`` (None when absent, unreadable or written for another pid)."""
    try:
        with open(os.path.join(state_dir, PLAN_FILE), encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("pid") == pid else None


def read_pid_file(state_dir: str) -> Optional[int]:
    try:
        with open(os.path.join(state_dir, PID_FILE), encoding="ascii") as fh:
            pid = int(fh.read().strip())
    except (OSError, ValueError):
        return None
    return pid if os.path.exists(f"/proc/{pid}") else None
