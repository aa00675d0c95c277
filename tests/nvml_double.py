"""An NVML stand-in fed from recorded answers (the real thing cannot exist on a GPU-less CI machine).

It exposes the subset of ``pynvml`` that vllm_nodeagent.nvml calls, with the same names and shapes, so the
wrapper's real code runs against it. Recordings come from tests/gpu/record_nvml.py on a real GPU host.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any


class NVMLError(Exception):
    pass


def words(ids: list[int], count: int) -> list[int]:
    out = [0] * count
    for i in ids:
        out[i // 64] |= 1 << (i % 64)
    return out


class NvmlDouble:
    NVMLError = NVMLError

    def __init__(self, recording: dict[str, Any], fail_init: str = "") -> None:
        self.rec = recording
        self.fail_init = fail_init
        self.initialised = False
        self.persistence = {d["bus_id"]: int(d.get("persistence_mode", 0)) for d in recording["devices"]}
        self.set_calls: list[tuple[str, int]] = []

    @classmethod
    def from_file(cls, path: Path) -> NvmlDouble:
        return cls(json.loads(path.read_text()))

    def _need_init(self) -> None:
        if not self.initialised:
            raise NVMLError("Uninitialized")

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise NVMLError(self.fail_init)
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self._need_init()
        self.initialised = False

    def nvmlSystemGetDriverVersion(self) -> str:
        self._need_init()
        return str(self.rec["driver_version"])

    def nvmlDeviceGetCount(self) -> int:
        self._need_init()
        return len(self.rec["devices"])

    def nvmlDeviceGetHandleByIndex(self, i: int) -> dict[str, Any]:
        self._need_init()
        return dict(self.rec["devices"][i])

    def nvmlDeviceGetHandleByPciBusId(self, bus_id: str) -> dict[str, Any]:
        self._need_init()
        want = bus_id.lower().split(":", 1)[1]
        for d in self.rec["devices"]:
            if d["bus_id"].lower().split(":", 1)[1] == want:
                return dict(d)
        raise NVMLError("Not Found")

    def nvmlDeviceGetPciInfo(self, h: dict[str, Any]) -> SimpleNamespace:
        return SimpleNamespace(busId=h["bus_id"])

    def nvmlDeviceGetName(self, h: dict[str, Any]) -> str:
        return str(h["name"])

    def nvmlDeviceGetUUID(self, h: dict[str, Any]) -> str:
        return str(h["uuid"])

    def nvmlDeviceGetMemoryAffinity(self, h: dict[str, Any], size: int, scope: int) -> list[int]:
        assert scope == 0, "the agent must ask for NODE scope"
        return words(h["memory_affinity_nodes"], size)

    def nvmlDeviceGetCpuAffinityWithinScope(self, h: dict[str, Any], size: int, scope: int) -> list[int]:
        assert scope == 0, "the agent must ask for NODE scope"
        return words(h["cpu_affinity"], size)

    def nvmlDeviceGetNumaNodeId(self, h: dict[str, Any]) -> int:
        # On Grace this is the GPU memory's own node (the agent may link it, never bind to it); PCIe hosts answer
        # Not Supported (tests/gpu/h100-2026-11-25 recorded exactly that).
        if "gpu_memory_node" not in h:
            raise NVMLError("Not Supported")
        return int(h["gpu_memory_node"])

    def nvmlDeviceGetPersistenceMode(self, h: dict[str, Any]) -> int:
        if h.get("persistence_error"):
            raise NVMLError(h["persistence_error"])
        return self.persistence[h["bus_id"]]

    def nvmlDeviceSetPersistenceMode(self, h: dict[str, Any], mode: int) -> None:
        if h.get("set_persistence_error"):
            raise NVMLError(h["set_persistence_error"])
        self.set_calls.append((h["bus_id"], mode))
        self.persistence[h["bus_id"]] = mode

    def _index(self, h: dict[str, Any]) -> int:
        return next(i for i, d in enumerate(self.rec["devices"]) if d["bus_id"] == h["bus_id"])

    def nvmlDeviceGetTopologyCommonAncestor(self, a: dict[str, Any], b: dict[str, Any]) -> int:
        i, j = sorted((self._index(a), self._index(b)))
        try:
            return int(self.rec["common_ancestor"][f"{i}-{j}"])
        except KeyError:
            raise NVMLError("Not Supported") from None

    def _link(self, h: dict[str, Any], link: int) -> dict[str, Any]:
        links = h.get("nvlinks")
        if links is None or link >= len(links):
            raise NVMLError("Not Supported" if links is None else "Invalid Argument")
        return dict(links[link])

    def nvmlDeviceGetNvLinkState(self, h: dict[str, Any], link: int) -> int:
        return int(self._link(h, link).get("active", 1))

    def nvmlDeviceGetNvLinkRemoteDeviceType(self, h: dict[str, Any], link: int) -> int:
        return int(self._link(h, link)["type"])

    def nvmlDeviceGetNvLinkRemotePciInfo_v2(self, h: dict[str, Any], link: int) -> SimpleNamespace:
        return SimpleNamespace(busId=self._link(h, link)["remote"])

    def nvmlDeviceGetComputeRunningProcesses(self, h: dict[str, Any]) -> list[SimpleNamespace]:
        return [SimpleNamespace(pid=p, usedGpuMemory=0) for p in h.get("compute_pids", [])]


def hgx_8gpu_recording() -> dict[str, Any]:
    """What NVML answers on the two_socket_8gpu fixture host (NVML lists by its own order: bus id)."""
    node0, node1 = list(range(56)), list(range(56, 112))
    devices = []
    for i, bus in enumerate(["18", "2a", "3a", "5d", "9a", "ab", "ba", "db"]):
        devices.append({
            "bus_id": f"00000000:{bus.upper()}:00.0",
            "name": "NVIDIA H100 80GB HBM3",
            "uuid": f"GPU-00000000-0000-0000-0000-00000000000{i}",
            "memory_affinity_nodes": [0] if i < 4 else [1],
            "cpu_affinity": node0 if i < 4 else node1,
            "persistence_mode": 0,
            # HGX: every GPU has 18 NVLinks into the NVSwitch fabric
            "nvlinks": [{"type": 2, "remote": "00000000:00:00.0"}] * 18,
        })
    # PCIe ancestry: same socket = NODE (40), across sockets = SYS (50)
    ancestor = {f"{i}-{j}": 40 if (i < 4) == (j < 4) else 50 for i in range(8) for j in range(i + 1, 8)}
    return {"driver_version": "580.159.04", "devices": devices, "common_ancestor": ancestor}
