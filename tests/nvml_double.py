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


class FabricInfo:
    """The fields of pynvml's c_nvmlGpuFabricInfo_t that the agent reads (no ctypes: see test_imports)."""

    state = 0
    status = 0


class NvmlDouble:
    NVMLError = NVMLError
    c_nvmlGpuFabricInfo_t = FabricInfo

    @staticmethod
    def byref(obj: Any) -> Any:  # pynvml re-exports ctypes.byref; the double passes the object itself
        return obj

    def __init__(self, recording: dict[str, Any], fail_init: str = "") -> None:
        self.rec = recording
        self.fail_init = fail_init
        self.initialised = False
        self.persistence = {d["bus_id"]: int(d.get("persistence_mode", 0)) for d in recording["devices"]}
        self.set_calls: list[tuple[str, int]] = []
        self.reason_calls: dict[str, int] = {}
        # What the settings of issue 27 changed, per GPU: a setter's value wins over the recording from then on
        self.live: dict[str, dict[str, Any]] = {d["bus_id"]: {} for d in recording["devices"]}
        self.setter_calls: list[tuple[str, str, tuple[Any, ...]]] = []  # (function, bus id, arguments)

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
        if "compute_processes" in h:  # recorded as [[pid, used bytes], ...]
            return [SimpleNamespace(pid=p, usedGpuMemory=m) for p, m in _answer(h, "compute_processes")]
        return [SimpleNamespace(pid=p, usedGpuMemory=0) for p in h.get("compute_pids", [])]

    # -- readiness checks (issue 16): each answer recorded per device; absent = "Not Supported" ---------------
    def nvmlDeviceGetRemappedRows(self, h: dict[str, Any]) -> tuple[int, int, int, int]:
        c, u, p, f = _answer(h, "remapped_rows")
        return int(c), int(u), int(p), int(f)

    def nvmlDeviceGetTotalEccErrors(self, h: dict[str, Any], error_type: int, counter_type: int) -> int:
        # nvmlMemoryErrorType_t 1 = uncorrected, 0 = corrected; nvmlEccCounterType_t 0 = volatile, 1 = aggregate
        kind = "uncorrected" if error_type == 1 else "corrected"
        return int(_answer(h, f"ecc_{kind}_{'volatile' if counter_type == 0 else 'aggregate'}"))

    def nvmlDeviceGetFieldValues(self, h: dict[str, Any], field_ids: list[int]) -> list[SimpleNamespace]:
        out = []
        for fid in field_ids:
            value = h.get("field_values", {}).get(str(fid))
            if value is None or isinstance(value, dict):
                out.append(SimpleNamespace(fieldId=fid, nvmlReturn=3, valueType=1, value=SimpleNamespace(uiVal=0)))
            else:
                out.append(
                    SimpleNamespace(fieldId=fid, nvmlReturn=0, valueType=1, value=SimpleNamespace(uiVal=int(value)))
                )
        return out

    def nvmlDeviceGetCudaComputeCapability(self, h: dict[str, Any]) -> tuple[int, int]:
        major, minor = _answer(h, "cuda_compute_capability")  # issue 23.4's fingerprint; absent: Not Supported
        return int(major), int(minor)

    def nvmlDeviceGetComputeMode(self, h: dict[str, Any]) -> int:
        return int(self._live(h, "compute_mode"))

    def _live(self, h: dict[str, Any], key: str) -> Any:
        """What a setter last wrote, else the recorded answer (a recorded refusal raises as the real call did)."""
        live = self.live[h["bus_id"]]
        return live[key] if key in live else _answer(h, key)

    # -- the GPU settings of issue 27: getters answer the live state, setters check what the driver checks ------
    def _setter(self, fn: str, h: dict[str, Any], *args: Any) -> dict[str, Any]:
        """A setter call: refused as recorded in h["refuse"][fn] (e.g. "Insufficient Permissions"), else logged."""
        self._need_init()
        refusal = h.get("refuse", {}).get(fn)
        if refusal:
            raise NVMLError(refusal)
        self.setter_calls.append((fn, h["bus_id"], args))
        return self.live[h["bus_id"]]

    def nvmlDeviceGetPowerManagementLimit(self, h: dict[str, Any]) -> int:
        return int(self._live(h, "power_limit_mw"))

    def nvmlDeviceGetPowerManagementDefaultLimit(self, h: dict[str, Any]) -> int:
        return int(_answer(h, "power_default_limit_mw"))

    def nvmlDeviceGetPowerManagementLimitConstraints(self, h: dict[str, Any]) -> list[int]:
        lo, hi = _answer(h, "power_limit_constraints_mw")
        return [int(lo), int(hi)]  # pynvml returns a list [min, max]

    def nvmlDeviceSetPowerManagementLimit(self, h: dict[str, Any], limit: int) -> None:
        lo, hi = _answer(h, "power_limit_constraints_mw")
        if not isinstance(limit, int) or not lo <= limit <= hi:
            raise NVMLError("Invalid Argument")  # the driver's answer to a limit outside the constraints
        self._setter("nvmlDeviceSetPowerManagementLimit", h, limit)["power_limit_mw"] = limit

    def nvmlDeviceGetSupportedMemoryClocks(self, h: dict[str, Any]) -> list[int]:
        return [int(x) for x in _answer(h, "supported_memory_clocks")]

    def nvmlDeviceGetSupportedGraphicsClocks(self, h: dict[str, Any], memory: int) -> list[int]:
        graphics = _answer(h, "supported_graphics_clocks")
        if str(memory) not in graphics:
            raise NVMLError("Not Found")
        return [int(x) for x in _answer(graphics, str(memory))]

    def nvmlDeviceGetApplicationsClock(self, h: dict[str, Any], clock_type: int) -> int:
        return int(_answer(self._live(h, "applications_clocks"), {0: "graphics", 2: "memory"}[clock_type]))

    def nvmlDeviceGetDefaultApplicationsClock(self, h: dict[str, Any], clock_type: int) -> int:
        return int(_answer(_answer(h, "default_applications_clocks"), {0: "graphics", 2: "memory"}[clock_type]))

    def nvmlDeviceSetApplicationsClocks(self, h: dict[str, Any], memory: int, graphics: int) -> None:
        supported = h.get("supported_graphics_clocks", {})
        if graphics not in supported.get(str(memory), []):
            raise NVMLError("Invalid Argument")
        live = self._setter("nvmlDeviceSetApplicationsClocks", h, memory, graphics)
        live["applications_clocks"] = {"graphics": graphics, "memory": memory}

    def nvmlDeviceResetApplicationsClocks(self, h: dict[str, Any]) -> None:
        live = self._setter("nvmlDeviceResetApplicationsClocks", h)
        live["applications_clocks"] = dict(_answer(h, "default_applications_clocks"))

    def nvmlDeviceSetComputeMode(self, h: dict[str, Any], mode: int) -> None:
        if mode not in (0, 1, 2, 3):
            raise NVMLError("Invalid Argument")
        self._setter("nvmlDeviceSetComputeMode", h, mode)["compute_mode"] = mode

    def nvmlDeviceGetEccMode(self, h: dict[str, Any]) -> list[int]:
        return [int(x) for x in _answer(h, "ecc_mode")]  # [current, pending]

    def nvmlDeviceGetMigMode(self, h: dict[str, Any]) -> list[int]:
        return [int(x) for x in _answer(h, "mig_mode")]

    def nvmlDeviceGetMemoryInfo(self, h: dict[str, Any]) -> SimpleNamespace:
        total, used = _answer(h, "memory")
        return SimpleNamespace(total=int(total), used=int(used), free=int(total) - int(used))

    def nvmlDeviceGetCurrPcieLinkWidth(self, h: dict[str, Any]) -> int:
        return int(_answer(h, "pcie")["curr_width"])

    def nvmlDeviceGetMaxPcieLinkWidth(self, h: dict[str, Any]) -> int:
        return int(_answer(h, "pcie")["max_width"])

    def nvmlDeviceGetCurrPcieLinkGeneration(self, h: dict[str, Any]) -> int:
        return int(_answer(h, "pcie")["curr_gen"])

    def nvmlDeviceGetMaxPcieLinkGeneration(self, h: dict[str, Any]) -> int:
        return int(_answer(h, "pcie")["max_gen"])

    def nvmlDeviceGetUtilizationRates(self, h: dict[str, Any]) -> SimpleNamespace:
        return SimpleNamespace(gpu=int(_answer(h, "utilization_gpu")), memory=0)

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: dict[str, Any]) -> int:
        """Recorded as a list of samples; successive calls replay them in turn (the last one repeats)."""
        samples = _answer(h, "clocks_event_reasons")
        key = h["bus_id"]
        n = self.reason_calls.get(key, 0)
        self.reason_calls[key] = n + 1
        return int(samples[min(n, len(samples) - 1)])

    def nvmlDeviceGetP2PStatus(self, a: dict[str, Any], b: dict[str, Any], index: int) -> int:
        assert index == 0, "NVML_P2P_CAPS_INDEX_READ"
        i, j = sorted((self._index(a), self._index(b)))
        try:
            return int(self.rec["p2p_read"][f"{i}-{j}"])
        except KeyError:
            raise NVMLError("Not Supported") from None

    def nvmlDeviceGetGpuFabricInfo(self, h: dict[str, Any], ref: Any) -> int:
        state, status = _answer(h, "fabric")
        info = ref
        info.state, info.status = int(state), int(status)
        return 0

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        self._need_init()
        return int(_answer(self.rec, "cuda_driver_version"))


def _answer(rec: dict[str, Any], key: str) -> Any:
    """A recorded answer; a missing key or {"error": "..."} raises NVMLError the way the real call failed."""
    if key not in rec:
        raise NVMLError("Not Supported")
    value = rec[key]
    if isinstance(value, dict) and "error" in value:
        raise NVMLError(str(value["error"]))
    return value


def hgx_8gpu_recording() -> dict[str, Any]:
    """What NVML answers on the two_socket_8gpu fixture host (NVML lists by its own order: bus id)."""
    node0, node1 = list(range(56)), list(range(56, 112))
    devices = []
    for i, bus in enumerate(["18", "2a", "3a", "5d", "9a", "ab", "ba", "db"]):
        devices.append(
            {
                "bus_id": f"00000000:{bus.upper()}:00.0",
                "name": "NVIDIA H100 80GB HBM3",
                "uuid": f"GPU-00000000-0000-0000-0000-00000000000{i}",
                "memory_affinity_nodes": [0] if i < 4 else [1],
                "cpu_affinity": node0 if i < 4 else node1,
                "persistence_mode": 0,
                # HGX: every GPU has 18 NVLinks into the NVSwitch fabric
                "nvlinks": [{"type": 2, "remote": "00000000:00:00.0"}] * 18,
                # an idle, healthy HGX GPU (the readiness checks' answers)
                "remapped_rows": [0, 0, 0, 0],
                "ecc_uncorrected_volatile": 0,
                "ecc_corrected_volatile": 0,
                "field_values": {"230": 0},
                "compute_mode": 0,
                "mig_mode": [0, 0],
                # issue 27's settings, as an H100 SXM answers them (shapes as recorded on the H200)
                "power_limit_mw": 700000,
                "power_default_limit_mw": 700000,
                "power_limit_constraints_mw": [200000, 700000],
                "supported_memory_clocks": [2619],
                "supported_graphics_clocks": {"2619": list(range(1980, 344, -15))},
                "applications_clocks": {"graphics": 1980, "memory": 2619},
                "default_applications_clocks": {"graphics": 1980, "memory": 2619},
                "ecc_mode": [1, 1],
                "ecc_uncorrected_aggregate": 0,
                "ecc_corrected_aggregate": 0,
                "memory": [85520809984, 1048576],
                "compute_processes": [],
                "pcie": {"curr_width": 16, "max_width": 16, "curr_gen": 1, "max_gen": 5},  # Gen1 while idle
                "utilization_gpu": 0,
                "clocks_event_reasons": [1],
                "fabric": [3, 0],
            }
        )
    # PCIe ancestry: same socket = NODE (40), across sockets = SYS (50)
    ancestor = {f"{i}-{j}": 40 if (i < 4) == (j < 4) else 50 for i in range(8) for j in range(i + 1, 8)}
    p2p = {k: 0 for k in ancestor}  # NVML_P2P_STATUS_OK
    return {
        "driver_version": "580.159.04",
        "devices": devices,
        "common_ancestor": ancestor,
        "p2p_read": p2p,
        "cuda_driver_version": 13000,
    }
