"""A thin wrapper over NVML (``pynvml`` from the ``nvidia-ml-py`` package).

Everything NVML can throw — the library missing, no driver, a call failing — surfaces as ``NvmlUnavailable``
or ``NvmlCallError`` so callers degrade to sysfs instead of crashing. The wrapper takes the module as a
parameter, which lets tests replay answers recorded on a real GPU host (tests/nvml_double.py).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Optional, Union

from vllm_nodeagent.host.parse import ParseError, normalize_pci_bus_id

# nvml.h: NVML_AFFINITY_SCOPE_NODE = 0 (NUMA node), NVML_AFFINITY_SCOPE_SOCKET = 1.
AFFINITY_SCOPE_NODE = 0
_WORD_BITS = 64  # NVML's cpuSet/nodeSet arrays are unsigned long words; 64-bit on every Linux we support.


# nvml.h: nvmlGpuTopologyLevel_t, labelled as `nvidia-smi topo -m` labels them.
TOPOLOGY_LABELS = {0: "INT", 10: "PIX", 20: "PXB", 30: "PHB", 40: "NODE", 50: "SYS"}
NVLINK_MAX_LINKS = 18  # NVML_NVLINK_MAX_LINKS (Hopper has 18 links per GPU)
NVLINK_DEVICE_GPU, NVLINK_DEVICE_SWITCH = 0, 2  # nvmlNvLinkDeviceType_t


# nvml.h nvmlValueType_t -> the member of nvmlValue_t that holds it (a field value is a union)
_VALUE_MEMBERS = {1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}


CLOCK_GRAPHICS, CLOCK_MEM = 0, 2  # nvmlClockType_t


@dataclass(frozen=True)
class PowerLimits:
    """NVML's power limits of one GPU, in milliwatts."""

    current: int
    default: int
    minimum: int
    maximum: int


class NvmlUnavailable(Exception):
    """NVML cannot be used on this host (library, driver or device missing)."""


class NvmlCallError(Exception):
    """One NVML call failed; the GPU is still there."""


@dataclass(frozen=True)
class NvmlGpu:
    nvml_index: int
    pci_bus_id: str  # sysfs form, 4-digit domain
    name: str
    uuid: str
    memory_nodes: tuple[int, ...]  # nvmlDeviceGetMemoryAffinity(scope=NODE): the nearest NUMA node(s)
    local_cpus: tuple[int, ...]  # nvmlDeviceGetCpuAffinityWithinScope(scope=NODE)


def mask_words_to_ids(words: Any) -> list[int]:
    """Bits set in NVML's array of unsigned-long words, as ids (CPU or node numbers)."""
    ids: list[int] = []
    for w, word in enumerate(words):
        value = int(word)
        ids.extend(w * _WORD_BITS + b for b in range(value.bit_length()) if value >> b & 1)
    return ids


def _text(value: Union[str, bytes]) -> str:
    # Older nvidia-ml-py returned bytes; current returns str.
    return value.decode() if isinstance(value, bytes) else value


ModuleLoader = Callable[[], Any]


def _import_pynvml() -> ModuleType:
    return importlib.import_module("pynvml")


class Nvml:
    """An initialised NVML session. Use ``Nvml.open()``; call ``close()`` (or use ``with``)."""

    def __init__(self, lib: Any) -> None:
        self._lib = lib

    @classmethod
    def open(cls, loader: ModuleLoader = _import_pynvml) -> Nvml:
        try:
            lib = loader()
        except ImportError as exc:
            raise NvmlUnavailable(f"pynvml not importable: {exc}") from None
        try:
            lib.nvmlInit()
        except lib.NVMLError as exc:
            raise NvmlUnavailable(f"nvmlInit failed: {exc}") from None
        except OSError as exc:  # some versions leak the dlopen failure as OSError
            raise NvmlUnavailable(f"NVML library not loadable: {exc}") from None
        return cls(lib)

    def close(self) -> None:
        try:
            self._lib.nvmlShutdown()
        except self._lib.NVMLError as exc:
            raise NvmlCallError(f"nvmlShutdown: {exc}") from None

    def __enter__(self) -> Nvml:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except self._lib.NVMLError as exc:
            raise NvmlCallError(f"{what}: {exc}") from None

    def driver_version(self) -> str:
        return _text(self._call("nvmlSystemGetDriverVersion", self._lib.nvmlSystemGetDriverVersion))

    def count(self) -> int:
        return int(self._call("nvmlDeviceGetCount", self._lib.nvmlDeviceGetCount))

    def _handle(self, index: int) -> Any:
        return self._call("nvmlDeviceGetHandleByIndex", self._lib.nvmlDeviceGetHandleByIndex, index)

    def handle_by_bus_id(self, pci_bus_id: str) -> Any:
        return self._call("nvmlDeviceGetHandleByPciBusId", self._lib.nvmlDeviceGetHandleByPciBusId, pci_bus_id)

    def gpus(self, cpu_count: int, node_count: int) -> list[NvmlGpu]:
        """Every GPU NVML sees, with its NUMA affinity."""
        out: list[NvmlGpu] = []
        cpu_words = max(1, (cpu_count + _WORD_BITS - 1) // _WORD_BITS)
        node_words = max(1, (node_count + _WORD_BITS - 1) // _WORD_BITS)
        lib = self._lib
        for i in range(self.count()):
            h = self._handle(i)
            pci = self._call("nvmlDeviceGetPciInfo", lib.nvmlDeviceGetPciInfo, h)
            try:
                bus_id = normalize_pci_bus_id(_text(pci.busId))
            except ParseError as exc:
                raise NvmlCallError(f"nvmlDeviceGetPciInfo: {exc}") from None
            # Not nvmlDeviceGetNumaNodeId: on coherent (Grace) platforms that is the GPU memory's own node.
            mem = self._call(
                "nvmlDeviceGetMemoryAffinity", lib.nvmlDeviceGetMemoryAffinity, h, node_words, AFFINITY_SCOPE_NODE
            )
            cpus = self._call(
                "nvmlDeviceGetCpuAffinityWithinScope",
                lib.nvmlDeviceGetCpuAffinityWithinScope,
                h,
                cpu_words,
                AFFINITY_SCOPE_NODE,
            )
            out.append(
                NvmlGpu(
                    nvml_index=i,
                    pci_bus_id=bus_id,
                    name=_text(self._call("nvmlDeviceGetName", lib.nvmlDeviceGetName, h)),
                    uuid=_text(self._call("nvmlDeviceGetUUID", lib.nvmlDeviceGetUUID, h)),
                    memory_nodes=tuple(mask_words_to_ids(mem)),
                    local_cpus=tuple(mask_words_to_ids(cpus)),
                )
            )
        return out

    def nvlinks(self, pci_bus_id: str) -> tuple[dict[str, int], int]:
        """(active links per peer GPU bus id, active links to NVSwitches). Unsupported links end the scan."""
        h = self.handle_by_bus_id(pci_bus_id)
        lib = self._lib
        peers: dict[str, int] = {}
        to_switch = 0
        for link in range(NVLINK_MAX_LINKS):
            try:
                if not lib.nvmlDeviceGetNvLinkState(h, link):
                    continue
                kind = lib.nvmlDeviceGetNvLinkRemoteDeviceType(h, link)
                if kind == NVLINK_DEVICE_SWITCH:
                    to_switch += 1
                elif kind == NVLINK_DEVICE_GPU:
                    remote = normalize_pci_bus_id(_text(lib.nvmlDeviceGetNvLinkRemotePciInfo_v2(h, link).busId))
                    peers[remote] = peers.get(remote, 0) + 1
            except lib.NVMLError:
                break  # NOT_SUPPORTED / INVALID_ARGUMENT past the last link, or no NVLink at all (PCIe cards)
            except ParseError:
                continue
        return peers, to_switch

    def link_matrix(self, bus_ids: list[str]) -> list[list[str]]:
        """GPU-to-GPU connection labels like `nvidia-smi topo -m`: X, NV#, PIX, PXB, PHB, NODE, SYS."""
        links = {b: self.nvlinks(b) for b in bus_ids}
        handles = {b: self.handle_by_bus_id(b) for b in bus_ids}
        matrix: list[list[str]] = []
        for a in bus_ids:
            row = []
            for b in bus_ids:
                if a == b:
                    row.append("X")
                    continue
                direct = links[a][0].get(b, 0)
                switched = min(links[a][1], links[b][1])  # an NVSwitch fabric joins every GPU attached to it
                if direct or switched:
                    row.append(f"NV{direct + switched}")
                    continue
                level = self._call(
                    "nvmlDeviceGetTopologyCommonAncestor",
                    self._lib.nvmlDeviceGetTopologyCommonAncestor,
                    handles[a],
                    handles[b],
                )
                row.append(TOPOLOGY_LABELS.get(int(level), str(level)))
            matrix.append(row)
        return matrix

    def gpu_memory_numa_node(self, pci_bus_id: str) -> Optional[int]:
        """nvmlDeviceGetNumaNodeId: on coherent platforms (Grace Hopper/Blackwell) the node that IS the GPU's
        memory. Only a hint for linking CPU-less nodes to their GPU, never a locality; None when NVML has no answer
        (Not Supported on PCIe hosts)."""
        try:
            h = self.handle_by_bus_id(pci_bus_id)
            node = int(self._lib.nvmlDeviceGetNumaNodeId(h))
        except (self._lib.NVMLError, NvmlCallError):
            return None
        return node if node >= 0 else None

    def persistence_mode(self, pci_bus_id: str) -> bool:
        h = self.handle_by_bus_id(pci_bus_id)
        return bool(self._call("nvmlDeviceGetPersistenceMode", self._lib.nvmlDeviceGetPersistenceMode, h))

    def set_persistence_mode(self, pci_bus_id: str, enabled: bool) -> None:
        h = self.handle_by_bus_id(pci_bus_id)
        self._call("nvmlDeviceSetPersistenceMode", self._lib.nvmlDeviceSetPersistenceMode, h, 1 if enabled else 0)

    # -- the GPU settings of issue 27 (settings/gpu_*.py): power limit, application clocks, compute mode --------
    def power_limits(self, pci_bus_id: str) -> PowerLimits:
        """Current, default and allowed power limits in milliwatts (what nvidia-smi -q -d POWER shows in W)."""
        h = self.handle_by_bus_id(pci_bus_id)
        lib = self._lib
        current = self._call("nvmlDeviceGetPowerManagementLimit", lib.nvmlDeviceGetPowerManagementLimit, h)
        default = self._call(
            "nvmlDeviceGetPowerManagementDefaultLimit", lib.nvmlDeviceGetPowerManagementDefaultLimit, h
        )
        lo, hi = self._call(
            "nvmlDeviceGetPowerManagementLimitConstraints", lib.nvmlDeviceGetPowerManagementLimitConstraints, h
        )
        return PowerLimits(int(current), int(default), int(lo), int(hi))

    def set_power_limit(self, pci_bus_id: str, milliwatts: int) -> None:
        h = self.handle_by_bus_id(pci_bus_id)
        self._call("nvmlDeviceSetPowerManagementLimit", self._lib.nvmlDeviceSetPowerManagementLimit, h, milliwatts)

    def applications_clocks(self, pci_bus_id: str, default: bool = False) -> tuple[int, int]:
        """(graphics, memory) MHz of the application clocks (``default``: the board's defaults, what reset gives)."""
        h = self.handle_by_bus_id(pci_bus_id)
        name = "nvmlDeviceGetDefaultApplicationsClock" if default else "nvmlDeviceGetApplicationsClock"
        fn = getattr(self._lib, name, None)
        if fn is None:
            raise NvmlCallError(f"{name}: not in this nvidia-ml-py")
        return int(self._call(name, fn, h, CLOCK_GRAPHICS)), int(self._call(name, fn, h, CLOCK_MEM))

    def supported_clocks(self, pci_bus_id: str) -> dict[int, list[int]]:
        """Supported memory clock -> the graphics clocks supported with it, MHz (nvidia-smi -q -d SUPPORTED_CLOCKS)."""
        h = self.handle_by_bus_id(pci_bus_id)
        lib = self._lib
        mems = self._call("nvmlDeviceGetSupportedMemoryClocks", lib.nvmlDeviceGetSupportedMemoryClocks, h)
        return {
            int(m): [
                int(g)
                for g in self._call(
                    "nvmlDeviceGetSupportedGraphicsClocks", lib.nvmlDeviceGetSupportedGraphicsClocks, h, int(m)
                )
            ]
            for m in mems
        }

    def set_applications_clocks(self, pci_bus_id: str, graphics: int, memory: int) -> None:
        h = self.handle_by_bus_id(pci_bus_id)
        # nvmlDeviceSetApplicationsClocks(device, memClockMHz, graphicsClockMHz): memory first
        self._call("nvmlDeviceSetApplicationsClocks", self._lib.nvmlDeviceSetApplicationsClocks, h, memory, graphics)

    def reset_applications_clocks(self, pci_bus_id: str) -> None:
        h = self.handle_by_bus_id(pci_bus_id)
        self._call("nvmlDeviceResetApplicationsClocks", self._lib.nvmlDeviceResetApplicationsClocks, h)

    def compute_mode(self, pci_bus_id: str) -> int:
        h = self.handle_by_bus_id(pci_bus_id)
        return int(self._call("nvmlDeviceGetComputeMode", self._lib.nvmlDeviceGetComputeMode, h))

    def set_compute_mode(self, pci_bus_id: str, mode: int) -> None:
        h = self.handle_by_bus_id(pci_bus_id)
        self._call("nvmlDeviceSetComputeMode", self._lib.nvmlDeviceSetComputeMode, h, mode)

    def mig_enabled(self, pci_bus_id: str) -> bool:
        """Whether MIG is on now (current mode); False where the board has no MIG."""
        try:
            current, _pending = self.device_get(pci_bus_id, "nvmlDeviceGetMigMode")
        except NvmlCallError:
            return False
        return int(current) == 1

    def compute_pids(self, pci_bus_id: str) -> list[int]:
        """PIDs with a compute context on the GPU (maps vLLM workers to their GPU)."""
        h = self.handle_by_bus_id(pci_bus_id)
        procs = self._call("nvmlDeviceGetComputeRunningProcesses", self._lib.nvmlDeviceGetComputeRunningProcesses, h)
        return sorted({int(p.pid) for p in procs})

    # -- read-only queries for doctor's readiness checks (vllm_nodeagent/checks/) -----------------------------
    def device_get(self, pci_bus_id: str, fn: str, *args: Any) -> Any:
        """One read-only ``nvmlDeviceGet*`` call by name. A function this pynvml lacks (older nvidia-ml-py)
        is an NvmlCallError like any refusal, so a check can skip instead of crash."""
        return self._get(fn, self.handle_by_bus_id(pci_bus_id), *args)

    def pair_get(self, bus_a: str, bus_b: str, fn: str, *args: Any) -> Any:
        """A read-only call about two GPUs (nvmlDeviceGetP2PStatus, nvmlDeviceGetTopologyCommonAncestor)."""
        return self._get(fn, self.handle_by_bus_id(bus_a), self.handle_by_bus_id(bus_b), *args)

    def system_get(self, fn: str) -> Any:
        """A read-only ``nvmlSystemGet*`` call by name."""
        return self._get(fn)

    def _get(self, fn: str, *args: Any) -> Any:
        if not fn.startswith(("nvmlDeviceGet", "nvmlSystemGet")):
            raise ValueError(f"{fn}: not a read-only NVML query")
        f = getattr(self._lib, fn, None)
        if f is None:
            raise NvmlCallError(f"{fn}: not in this nvidia-ml-py")
        return self._call(fn, f, *args)

    def fabric_info(self, pci_bus_id: str) -> tuple[int, int]:
        """(state, status) of the GPU's NVSwitch fabric registration: nvmlGpuFabricState_t, nvmlReturn_t."""
        make = getattr(self._lib, "c_nvmlGpuFabricInfo_t", None)
        byref = getattr(self._lib, "byref", None)  # pynvml does `from ctypes import *`: no ctypes import here
        if make is None or byref is None:
            raise NvmlCallError("nvmlDeviceGetGpuFabricInfo: not in this nvidia-ml-py")
        info = make()
        self.device_get(pci_bus_id, "nvmlDeviceGetGpuFabricInfo", byref(info))
        return int(info.state), int(info.status)

    def field_value(self, pci_bus_id: str, field_id: int) -> Optional[int]:
        """One nvmlDeviceGetFieldValues entry as an integer; None when the driver does not report it."""
        (value,) = self.device_get(pci_bus_id, "nvmlDeviceGetFieldValues", [field_id])
        if int(value.nvmlReturn) != 0:
            return None
        member = _VALUE_MEMBERS.get(int(value.valueType), "ullVal")
        return int(getattr(value.value, member))


NvmlOpener = Callable[[], Nvml]


def try_open(opener: Optional[NvmlOpener] = None) -> tuple[Optional[Nvml], str]:
    """(session, "") when NVML works, else (None, the reason) — for callers that degrade gracefully."""
    try:
        return (opener or Nvml.open)(), ""
    except NvmlUnavailable as exc:
        return None, str(exc)
