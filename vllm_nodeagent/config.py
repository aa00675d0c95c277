"""The configuration: one declared schema, TOML in, typed dataclasses out, one-line errors.

Every key is declared once, as a dataclass field whose metadata (``spec``) says its type, range or choices and
whether it is required. Loading walks those declarations, so the validator, the defaults and the typed result
cannot drift apart. An absent section means "do not manage this"; inside a settings section an absent key means
the same for that one setting.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from vllm_nodeagent.config_gpu import ClockPair, gpu_clocks, gpu_power
from vllm_nodeagent.host.parse import control_characters
from vllm_nodeagent.sysctl_kinds import MODE_SYSCTLS, is_range_sysctl

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on the 3.9/3.10 CI legs
    import tomli as tomllib

DEFAULT_CONFIG_PATH = "/etc/vllm-nodeagent/config.toml"


class ConfigError(Exception):
    """Bad configuration: one line naming the file, the line where known, the key and the value."""

    def __init__(self, file: str, message: str, key: str = "", value: Any = None, line: Optional[int] = None) -> None:
        self.file = file
        self.key = key
        self.value = value
        self.line = line
        where = f"{file}:{line}" if line else file
        what = f" {key} = {_show(value)}:" if key else ""
        super().__init__(f"{where}:{what} {message}")


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def spec(
    kind: str,
    default: Any = None,
    *,
    choices: tuple[str, ...] = (),
    minimum: Optional[float] = None,
    maximum: Optional[float] = None,
    required: bool = False,
    doc: str = "",
) -> Any:
    """A declared key. ``kind`` is one of: int, float, bool, str, path, list[str], list[int], dict[str,str]."""
    meta = {
        "kind": kind,
        "choices": choices,
        "minimum": minimum,
        "maximum": maximum,
        "required": required,
        "doc": doc,
    }
    if isinstance(default, (list, dict)):
        frozen_default = default
        return field(default_factory=lambda: type(frozen_default)(frozen_default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class AgentConfig:
    state_dir: str = spec("path", "/var/lib/vllm-nodeagent", doc="journal of originals and runtime state")
    cache_dir: str = spec("path", "/var/cache/vllm-nodeagent", doc="per-user compile caches for vLLM (<dir>/<user>)")
    keep_compile_cache: bool = spec(
        "bool", True, doc="keep them across starts, cleared when vLLM, torch, Python, the model or the GPU changed"
    )
    mode: str = spec("str", "enforce", choices=("enforce", "audit"), doc="enforce writes; audit is read-only")
    drift_interval_s: int = spec("int", 60, minimum=1, maximum=86400)
    revert_on_stop: bool = spec("bool", False, doc="restore journaled originals when the daemon stops")
    metrics_textfile: str = spec(
        "path", "", doc='Prometheus textfile for node_exporter; "auto" = this distro\'s directory; empty = off'
    )
    log_format: str = spec("str", "auto", choices=("auto", "console", "json"))


@dataclass(frozen=True)
class SysctlSetting:
    name: str
    value: str
    mode: str  # "floor" (never lower a host already above), "exact", or "range" (the live range contains it)


@dataclass(frozen=True)
class ThpConfig:
    enabled: Optional[str] = spec("str", choices=("always", "madvise", "never"))
    defrag: Optional[str] = spec("str", choices=("always", "defer", "defer+madvise", "madvise", "never"))


@dataclass(frozen=True)
class BlockConfig:
    devices: list[str] = spec("list[str]", required=True, doc="globs over /sys/block names, e.g. nvme*")
    scheduler: str = spec("str", required=True, choices=("none", "noop", "mq-deadline", "kyber", "bfq"))


@dataclass(frozen=True)
class CpuConfig:
    governor: Optional[str] = spec(
        "str", choices=("performance", "powersave", "schedutil", "ondemand", "conservative", "userspace")
    )


@dataclass(frozen=True)
class GpuConfig:
    persistence_mode: Optional[bool] = spec("bool")
    power_limit: Optional[str] = spec("gpu_power", doc='"max" | "default" | watts (checked per GPU at apply)')
    clocks: Optional[Union[str, ClockPair]] = spec("gpu_clocks", doc='"max" | "default" | { graphics, memory }')
    compute_mode: Optional[str] = spec("str", choices=("default",), doc="NVML compute mode Default")


@dataclass(frozen=True)
class IrqConfig:
    irqbalance: Optional[str] = spec("str", choices=("stop", "keep", "ignore"))
    affinity: bool = spec("bool", False, doc="pin GPU and NIC IRQs to their local NUMA CPUs")


@dataclass(frozen=True)
class PrewarmConfig:
    paths: list[str] = spec("list[str]", [], doc="files, directories or HF model ids to warm")
    include_model: bool = spec("bool", True, doc="also warm [vllm] model")
    memory_budget_fraction: float = spec("float", 0.5, minimum=0.01, maximum=0.95)
    lock: bool = spec("bool", False, doc="mlock the warmed pages while the daemon runs")
    threads: int = spec("int", 0, minimum=0, maximum=256, doc="0 = what the reader picks for the storage")
    stack: bool = spec(
        "bool", True, doc="prewarm and overlap = false: the vLLM interpreter and libraries first; false = weights only"
    )
    overlap: bool = spec(
        "bool", True, doc="the daemon reads the weights once vLLM's imports are done, not before; false = all before"
    )
    stack_learned: bool = spec(
        "bool", False, doc="overlap: first the stack's pages a serving vLLM had resident (learned at READY)"
    )
    io_priority: str = spec(
        "str",
        "idle",
        choices=("default", "low", "idle"),
        doc="overlap: the I/O class of the reads beside vLLM's start (mq-deadline, bfq); default = the daemon's",
    )


@dataclass(frozen=True)
class VllmConfig:
    command: list[str] = spec("list[str]", ["vllm", "serve"])
    model: str = spec("str", "")
    args: list[str] = spec("list[str]", [])
    gpus: list[int] = spec("list[int]", [], minimum=0, maximum=1023, doc="GPU indices; empty = all")
    numa: str = spec("str", "bind", choices=("bind", "preferred", "interleave", "none"))
    nodes: list[int] = spec("list[int]", [], minimum=0, maximum=1023, doc="override the NUMA nodes")
    user: str = spec("str", "vllm")
    env: dict[str, str] = spec("dict[str,str]", {})
    health_url: str = spec("str", "http://127.0.0.1:8000/health")
    health_interval_s: float = spec("float", 10.0, minimum=0.1, maximum=3600, doc="health polls once serving")
    unhealthy_after: int = spec("int", 3, minimum=1, maximum=1000, doc="failed polls in a row before a restart")
    start_timeout_s: int = spec("int", 1800, minimum=1, maximum=86400)
    stop_timeout_s: int = spec("int", 60, minimum=1, maximum=3600)
    restart_backoff_initial_s: float = spec("float", 2.0, minimum=0.1, maximum=3600)
    restart_backoff_max_s: float = spec("float", 300.0, minimum=1, maximum=86400)
    healthy_reset_s: float = spec("float", 600.0, minimum=1, maximum=86400)
    python: str = spec("path", "", doc="interpreter that runs vLLM, for argument checks; empty = derive")
    readiness: str = spec(
        "str",
        "completion",
        choices=("completion", "health"),
        doc="READY=1 after /health 200 and a one-token completion, or after /health alone",
    )
    smoke_timeout_s: float = spec("float", 120.0, minimum=1, maximum=3600, doc="the readiness completion's timeout")
    bytecode: bool = spec("bool", True, doc="compile the vLLM environment's missing bytecode at apply (issue 23)")


SECTIONS: dict[str, type] = {
    "agent": AgentConfig,
    "thp": ThpConfig,
    "block": BlockConfig,
    "cpu": CpuConfig,
    "gpu": GpuConfig,
    "irq": IrqConfig,
    "prewarm": PrewarmConfig,
    "vllm": VllmConfig,
}
# [sysctl] is a free-form table of sysctl names; it is declared by _load_sysctl below.
SECTION_NAMES = ("agent", "sysctl", "thp", "block", "cpu", "gpu", "irq", "prewarm", "vllm")


@dataclass(frozen=True)
class Config:
    path: str
    agent: AgentConfig = field(default_factory=AgentConfig)
    sysctl: Optional[tuple[SysctlSetting, ...]] = None
    thp: Optional[ThpConfig] = None
    block: Optional[BlockConfig] = None
    cpu: Optional[CpuConfig] = None
    gpu: Optional[GpuConfig] = None
    irq: Optional[IrqConfig] = None
    prewarm: Optional[PrewarmConfig] = None
    vllm: Optional[VllmConfig] = None


# ---------------------------------------------------------------------------------------------------------
_SYSCTL_NAME = re.compile(r"[a-z0-9_]+(\.[A-Za-z0-9_\-]+)+")
_INT_VECTOR = re.compile(r"-?[0-9]+( -?[0-9]+)*")  # ASCII digits: \\d would take "٣"
_SYSCTL_MIN, _SYSCTL_MAX = -(2**63), 2**64 - 1  # the widest kernel sysctl types (long, unsigned long)


class _Ctx:
    def __init__(self, file: str, text: str) -> None:
        self.file = file
        self.lines = text.splitlines()

    def line_of(self, section: str, key: str = "") -> Optional[int]:
        """Where ``[section]`` (and ``key`` in it) is written; TOML parsers do not report it."""
        in_section = False
        head = re.compile(rf"\s*\[\s*{re.escape(section)}\s*\]")
        key_re = re.compile(rf"\s*(\"{re.escape(key)}\"|'{re.escape(key)}'|{re.escape(key)})\s*=")
        for number, line in enumerate(self.lines, 1):
            if re.match(r"\s*\[", line):
                in_section = bool(head.match(line))
                if in_section and not key:
                    return number
                continue
            if in_section and key and key_re.match(line):
                return number
        return None

    def error(self, section: str, key: str, value: Any, message: str) -> ConfigError:
        dotted = f"{section}.{key}" if key else section
        return ConfigError(self.file, message, dotted, value, self.line_of(section, key))


def _check_value(ctx: _Ctx, section: str, key: str, raw: Any, meta: Mapping[str, Any]) -> Any:
    kind: str = meta["kind"]

    def bad(message: str) -> ConfigError:
        return ctx.error(section, key, raw, message)

    def number_in_range(value: float) -> None:
        lo, hi = meta["minimum"], meta["maximum"]
        if lo is not None and value < lo:
            raise bad(f"must be at least {lo:g}")
        if hi is not None and value > hi:
            raise bad(f"must be at most {hi:g}")

    if kind == "bool":
        if not isinstance(raw, bool):
            raise bad("expected true or false")
        return raw
    if kind == "int":
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise bad("expected an integer")
        number_in_range(raw)
        return raw
    if kind == "float":
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise bad("expected a number")
        number_in_range(float(raw))
        return float(raw)
    if kind in ("str", "path"):
        if not isinstance(raw, str):
            raise bad("expected a string")
        if meta["choices"] and raw not in meta["choices"]:
            raise bad(f"expected one of {', '.join(meta['choices'])}")
        if kind == "path" and raw and not raw.startswith("/") and not (raw == "auto" and key == "metrics_textfile"):
            raise bad("expected an absolute path")
        if "\0" in raw:
            raise bad("NUL byte in string")
        return raw
    if kind == "list[str]":
        if not isinstance(raw, list) or not all(isinstance(x, str) and "\0" not in x for x in raw):
            raise bad("expected a list of strings")
        return list(raw)
    if kind == "list[int]":
        if not isinstance(raw, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in raw):
            raise bad("expected a list of integers")
        for x in raw:
            number_in_range(x)
        if len(set(raw)) != len(raw):
            raise bad("duplicate entries")
        return list(raw)
    if kind == "dict[str,str]":
        if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
            raise bad("expected a table of strings")
        for name in raw:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ctx.error(section, f"{key}.{name}", raw[name], "not a valid environment variable name")
        return dict(raw)
    if kind == "gpu_power":
        return gpu_power(raw, bad)
    if kind == "gpu_clocks":

        def sub(name: str, value: Any, message: str) -> ConfigError:  # an inline table: the line of its key
            return ConfigError(ctx.file, message, f"{section}.{key}.{name}", value, ctx.line_of(section, key))

        return gpu_clocks(raw, bad, sub)
    raise AssertionError(f"undeclared kind {kind}")  # a schema bug, not user input


def _load_section(ctx: _Ctx, section: str, raw: Any) -> Any:
    cls = SECTIONS[section]
    if not isinstance(raw, dict):
        raise ctx.error(section, "", raw, "expected a table")
    declared = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in declared:
            known = ", ".join(declared)
            raise ctx.error(section, key, raw[key], f"unknown key (known: {known})")
    values: dict[str, Any] = {}
    for name, fld in declared.items():
        if name in raw:
            values[name] = _check_value(ctx, section, name, raw[name], fld.metadata)
            for sub, bad_value, why in control_characters(name, values[name]):
                raise ctx.error(section, sub, bad_value, why)
        elif fld.metadata["required"]:
            raise ctx.error(section, name, None, "required key is missing")
    return cls(**values)


def _load_sysctl(ctx: _Ctx, raw: Any) -> tuple[SysctlSetting, ...]:
    if not isinstance(raw, dict):
        raise ctx.error("sysctl", "", raw, "expected a table")
    settings: list[SysctlSetting] = []
    for name, entry in raw.items():

        def bad(message: str, value: Any = entry, key: str = name) -> ConfigError:
            return ctx.error("sysctl", key, value, message)

        if not _SYSCTL_NAME.fullmatch(name) or ".." in name:
            raise bad('not a sysctl name (write it dotted and quoted: "vm.max_map_count")')
        mode = "range" if is_range_sysctl(name) else "floor"
        value: Any = entry
        if isinstance(entry, dict):
            unknown = set(entry) - {"value", "mode"}
            if unknown:
                raise bad(f"unknown key {sorted(unknown)[0]!r} (known: value, mode)")
            if "value" not in entry:
                raise bad("table needs a value")
            value = entry["value"]
            mode = entry.get("mode", mode)
            if mode not in ("floor", "exact", "range"):
                raise bad("mode must be floor, exact or range", mode, f"{name}.mode")
        if isinstance(value, bool):
            raise bad("expected an integer or a string")
        if isinstance(value, int):
            text = str(value)
        elif isinstance(value, str):
            if any(not (" " <= c <= "~") and c != "\t" for c in value):
                raise bad("control or non-ASCII characters: the kernel takes printable ASCII (digits 0-9)")
            text = " ".join(value.split())
            if not text:
                raise bad("empty value")
        else:
            raise bad("expected an integer or a string")
        numbers = [int(f) for f in text.split()] if _INT_VECTOR.fullmatch(text) else None
        if numbers is not None and any(not _SYSCTL_MIN <= n <= _SYSCTL_MAX for n in numbers):
            raise bad(f"out of range: a sysctl integer is {_SYSCTL_MIN} to {_SYSCTL_MAX}")
        if numbers is not None:
            text = " ".join(str(n) for n in numbers)  # "007" and 7 are the same value
        if mode == "range" and (numbers is None or len(numbers) != 2 or numbers[0] > numbers[1]):
            raise bad(
                'a range takes two integers "LOW HIGH" with LOW <= HIGH (the live range must contain it); '
                'for any other value write mode = "exact"'
            )
        if mode == "floor" and numbers is None:
            if isinstance(entry, dict) and "mode" in entry:
                raise bad('a floor needs integers; for a word write mode = "exact"')
            # A floor only means something for numbers; words (e.g. a congestion control) must match exactly.
            mode = "exact"
        if mode == "floor" and numbers is not None:
            exact_form = f'write {{ value = {value if isinstance(value, int) else repr(text)}, mode = "exact" }}'
            if name in MODE_SYSCTLS:
                raise bad(f"{name} is a switch, not a quantity: a floor would never turn it down; {exact_form}")
            if all(n == 0 for n in numbers):
                raise bad(f"a floor of 0 never changes anything; {exact_form}")
        settings.append(SysctlSetting(name=name, value=text, mode=mode))
    return tuple(settings)


def parse_config(text: str, file: str) -> Config:
    """Validate TOML text into a Config. Raises ConfigError with a one-line message."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib puts "(at line N, column M)" in the message; surface it in our one-line form.
        m = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        raise ConfigError(file, f"malformed TOML: {exc}", line=int(m.group(1)) if m else None) from None
    ctx = _Ctx(file, text)
    kwargs: dict[str, Any] = {}
    for section, raw in data.items():
        if section not in SECTION_NAMES:
            raise ctx.error(section, "", raw, f"unknown section (known: {', '.join(SECTION_NAMES)})")
        if section == "sysctl":
            kwargs["sysctl"] = _load_sysctl(ctx, raw)
        else:
            kwargs[section] = _load_section(ctx, section, raw)
    vllm = kwargs.get("vllm")
    if vllm is not None:
        if not vllm.command:
            raise ctx.error("vllm", "command", vllm.command, "must name a program")
        if not re.match(r"https?://[^/\s]+", vllm.health_url):
            # urllib would happily open file:// URLs: only ever poll an HTTP endpoint.
            raise ctx.error("vllm", "health_url", vllm.health_url, "expected an http:// or https:// URL")
        if vllm.restart_backoff_initial_s > vllm.restart_backoff_max_s:
            raise ctx.error(
                "vllm",
                "restart_backoff_initial_s",
                vllm.restart_backoff_initial_s,
                "must not exceed restart_backoff_max_s",
            )
    return Config(path=file, **kwargs)


def load_config(explicit: Optional[str], default_path: Path, default_shown: str = DEFAULT_CONFIG_PATH) -> Config:
    """Load ``explicit`` (must exist) or the default file (missing = built-in defaults)."""
    path, shown = (Path(explicit), explicit) if explicit is not None else (default_path, default_shown)
    # The agent runs as root and acts on the config: refuse one others could have written (host/fsafe).
    from vllm_nodeagent.host import HostError
    from vllm_nodeagent.host.fsafe import read_file
    from vllm_nodeagent.host.trust import Refused

    try:
        raw = read_file("/", os.path.abspath(path), "config", follow=True)
    except Refused as exc:
        raise ConfigError(shown, str(exc)) from None
    except HostError as exc:
        if exc.errno == errno.ENOENT:
            if explicit is None:
                return Config(path="(built-in defaults)")
            raise ConfigError(shown, "no such file") from None
        raise ConfigError(shown, f"cannot read: {exc.strerror}") from None  # a link loop, a non-directory, EACCES
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(shown, f"cannot read: {exc}") from None
    return parse_config(text, shown)
