"""The CPU model and the ISA extensions vLLM's CPU backend dispatches on, from /proc/cpuinfo (issue 26.10).

py-cpuinfo was declared and never imported; it is dropped. What `topology` needs — the model name and a few flags
— is in /proc/cpuinfo, read through the host seam (so a --root tree answers, and the fixtures test it) with one file
read, where ``cpuinfo.get_cpu_info()`` took ~1.2 s here (shared/DESIGN.md; it runs cpuid probes and subprocesses).
Read once, by `topology` only: never on doctor's, apply's or the daemon's path.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from vllm_nodeagent.host import Host, HostError

# What vLLM's CPU backend checks or builds kernels for (csrc/cpu, cpu_types_*.hpp, its platform detection):
# x86 AVX2 / AVX-512 (+BF16, VNNI, FP16) / AMX, Arm NEON (asimd) / SVE / BF16 / I8MM, POWER VSX, s390x vector.
VLLM_ISA = (
    "avx2",
    "avx512f",
    "avx512_bf16",
    "avx512_vnni",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "asimd",
    "sve",
    "sve2",
    "bf16",
    "i8mm",
    "vsx",
    "vxe",
)


@dataclass(frozen=True)
class CpuModel:
    model: Optional[str]  # "Intel(R) Xeon(R) Platinum 8480+"; None where the kernel names none (most arm64)
    vendor: Optional[str]  # vendor_id (x86) or "CPU implementer" (arm64)
    isa: list[str] = field(default_factory=list)  # the VLLM_ISA flags this CPU has, in that order
    flags_count: int = 0  # all flags/Features the kernel lists

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def parse_cpuinfo(text: str) -> CpuModel:
    """The first processor block: ``model name`` / ``vendor_id`` / ``flags`` (x86), ``Features`` / ``CPU
    implementer`` (arm64), ``cpu`` (POWER), ``features`` (s390x)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields.get("flags") or fields.get("features"):
                break  # the first block is enough: the kernel lists the same flags for every CPU
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    flags = set((fields.get("flags") or fields.get("features") or "").split())
    if "altivec" in fields.get("cpu", "").lower():  # POWER: "POWER9 (raw), altivec supported"
        flags.add("vsx")
    model = fields.get("model name") or fields.get("cpu") or None
    vendor = fields.get("vendor_id") or fields.get("cpu implementer") or None
    return CpuModel(model, vendor, [f for f in VLLM_ISA if f in flags], len(flags))


def read_cpu_model(host: Host) -> Optional[CpuModel]:
    """None when /proc/cpuinfo is missing or unreadable (a --root tree without it)."""
    try:
        text = host.read("/proc/cpuinfo")
    except HostError:
        return None
    return parse_cpuinfo(text)
