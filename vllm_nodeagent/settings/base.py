"""The one protocol every host setting implements, and the shared base for file-backed settings.

apply, verify, revert, drift and doctor are loops over ``Tunable`` objects (see engine.py and doctor.py):
    read() -> compliant(current)? -> journal original -> write(target(current)) -> read() again.
A family of settings is one module in this package exposing a ``Family`` plus one line in families.py.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional, Protocol, runtime_checkable

from vllm_nodeagent.host import Host, HostError
from vllm_nodeagent.host.parse import ParseError, parse_bracket_list

if TYPE_CHECKING:
    from vllm_nodeagent.config import Config
    from vllm_nodeagent.nvml import Nvml
    from vllm_nodeagent.topology import Topology


# The most files one multi-file setting manages (a governor per cpufreq policy, an affinity per interrupt):
# twice Linux's NR_CPUS ceiling (8192). The journal's limits and the families' rebuild patterns derive from it.
MAX_MEMBERS = 16384


class NotApplicable(Exception):
    """The setting does not exist here (no cpufreq in a VM, no NVML, a device without that scheduler)."""


class UnknownSetting(NotApplicable):
    """Configured, but this kernel has no such setting: a misspelt name (an error for apply, a doctor warning)."""


class TunableError(Exception):
    """Reading or writing failed (EINVAL, EPERM, EROFS, a tool's non-zero exit). The message is one line."""


class Check(Protocol):
    """A setting as read-only code sees it: doctor, drift and metrics."""

    id: str  # "sysctl.vm.max_map_count", "block.nvme0n1.scheduler" — stable: doctor JSON and the journal key
    owner: Optional[str]  # someone else manages it (e.g. nvidia-persistenced): report, never write

    def read(self) -> str:
        """The current raw value as the host reports it; raises NotApplicable or TunableError."""

    def desired(self) -> str:
        """The configured value, as shown to people."""

    def compliant(self, current: str) -> bool:
        """Whether ``current`` satisfies the config (floors, aliases and bracket lists live here)."""

    def hint(self) -> str:
        """Doctor's note beside the fix command (``apply --only ID``, or ``fix_argv``): prose such as the manual
        equivalent ("by hand: sysctl -w ..."), one line, "" when nothing. Not a command: doctor shows it as a shell
        comment after the command."""

    def note(self, current: str) -> str:
        """Anything a person should know about the comparison (an alias used, say); "" when nothing."""

    def invalid(self, current: str) -> str:
        """Why the configured value cannot be written to this setting as the kernel has it; "" when it can."""


@runtime_checkable
class Tunable(Check, Protocol):
    """A setting apply may write and revert may restore."""

    family: str  # its Family's name: the journal keeps it beside params() to rebuild the writer for revert

    def params(self) -> dict[str, str]:
        """Everything its family's ``rebuild`` needs to make this setting again, without the config."""

    def target(self, current: str) -> str:
        """The value to write when ``current`` is not compliant (a floor keeps fields already above)."""

    def write(self, value: str) -> None:
        """Set the value; raises TunableError and leaves the host as it was on refusal."""


@dataclass(frozen=True)
class BuildInputs:
    """What a family builds its settings from."""

    config: Config
    topology: Topology
    host: Host
    nvml: Optional[Nvml] = None
    nvml_error: str = ""  # why NVML is not usable, for the GPU settings' skip message


Rebuilder = Callable[[Host, Optional["Nvml"], dict[str, str]], Tunable]


@dataclass(frozen=True)
class Family:
    """One kind of host setting: config -> settings (apply, doctor, drift), journal params -> a writer (revert).

    ``rebuild`` takes the journal's params as input it must check (anyone who can write the state dir writes the
    journal): it names only its own kernel paths and raises ValueError on anything else.
    """

    name: str  # what every setting it builds has as ``family``; stored in the journal
    build: Callable[[BuildInputs], list[Tunable]]
    rebuild: Rebuilder


def param(params: dict[str, str], key: str, pattern: re.Pattern[str]) -> str:
    """One journaled parameter, checked against what its family ever writes there; ValueError otherwise."""
    value = params.get(key)
    if value is None or not pattern.fullmatch(value) or ".." in value:
        raise ValueError(f"bad {key} {str(value)[:80]!r}")
    return value


def only_params(params: dict[str, str], *keys: str) -> None:
    extra = set(params) - set(keys)
    if extra:
        raise ValueError(f"unexpected parameter {sorted(extra)[0][:80]!r}")


class TunableDefaults:
    """What most tunables say beside their value: the fix hint, no note, nothing invalid."""

    id: str

    def hint(self) -> str:
        return ""

    def fix_argv(self) -> tuple[str, ...]:
        """Another program's command that fixes it (for a setting someone else owns); () = ``apply --only ID``."""
        return ()

    def note(self, current: str) -> str:
        return ""

    def invalid(self, current: str) -> str:
        return ""


class ValueTunable(TunableDefaults):
    """Defaults for a setting with one desired value, compliant when equal. Subclasses read and write."""

    family: str
    owner: Optional[str] = None
    id = ""
    _desired = ""

    def desired(self) -> str:
        return self._desired

    def compliant(self, current: str) -> bool:
        return current == self._desired

    def target(self, current: str) -> str:
        return self._desired


class FileTunable(ValueTunable):
    """A setting that is one kernel attribute file: sysctls, THP, the block scheduler."""

    def __init__(self, host: Host, id: str, path: str, desired: str = "") -> None:
        self.host = host
        self.id = id
        self.path = path
        self._desired = desired

    def params(self) -> dict[str, str]:
        return {"path": self.path}

    def read(self) -> str:
        if not self.host.exists(self.path):
            raise NotApplicable(f"{self.path} does not exist on this kernel")
        try:
            return self.host.read(self.path)
        except HostError as exc:
            raise TunableError(str(exc)) from None

    def read_bracketed(self) -> tuple[str, list[str]]:
        """(current, offered) of a "none [mq-deadline] kyber" attribute (THP, the block scheduler)."""
        raw = FileTunable.read(self)
        try:
            current, offered = parse_bracket_list(raw)
        except ParseError as exc:
            raise TunableError(f"{self.path}: {exc}") from None
        if current is None:
            raise TunableError(f"{self.path}: no bracketed current value in {raw!r}")
        return current, offered

    def write(self, value: str) -> None:
        try:
            self.host.write(self.path, value)
        except HostError as exc:
            raise TunableError(str(exc)) from None

    def hint(self) -> str:
        return f"writes {self.path}"


class MultiFileTunable(TunableDefaults):
    """One setting spread over several files that should all hold the same value.

    ``read`` reports the common value, or "name=value ..." when the files differ, so the journal keeps each
    file's original exactly and ``write`` accepts either form. Used for CPU governors (one file per cpufreq
    policy) and IRQ affinity (one file per interrupt).
    """

    family: str
    owner: Optional[str] = None

    def __init__(self, host: Host, id: str, paths: dict[str, str], desired: str = "") -> None:
        self.host = host
        self.id = id
        self.paths = dict(sorted(paths.items()))  # short name -> host path
        self._desired = desired

    def params(self) -> dict[str, str]:
        return dict(self.paths)

    def read_each(self, names: Optional[Iterable[str]] = None) -> dict[str, str]:
        if not self.paths:
            raise NotApplicable("no files to manage on this host")
        values: dict[str, str] = {}
        for name in self.paths if names is None else names:
            try:
                values[name] = self.host.read(self.paths[name])
            except HostError as exc:
                raise TunableError(str(exc)) from None
        return values

    def read_members(self) -> tuple[dict[str, str], list[str]]:
        """(the value of each member whose file exists, the members whose file is gone): revert restores what is
        left after a policy or a device's interrupt went away."""
        values: dict[str, str] = {}
        gone: list[str] = []
        for name, path in self.paths.items():
            try:
                values[name] = self.host.read(path)
            except HostError as exc:
                if exc.errno != errno.ENOENT:
                    raise TunableError(str(exc)) from None
                gone.append(name)
        return values, gone

    def read(self) -> str:
        values = self.read_each()
        distinct = set(values.values())
        if len(distinct) == 1:
            return distinct.pop()
        return " ".join(f"{k}={v}" for k, v in values.items())

    def split(self, value: str) -> dict[str, str]:
        """Per-file values from either form of ``read``'s output."""
        if "=" not in value:
            return {name: value for name in self.paths}
        pairs = dict(item.split("=", 1) for item in value.split())
        unknown = set(pairs) - set(self.paths)
        if unknown:
            raise TunableError(f"{self.id}: no such member {sorted(unknown)[0]!r}")
        return pairs

    def desired(self) -> str:
        return self._desired

    def compliant(self, current: str) -> bool:
        return all(self.member_compliant(v) for v in self.split(current).values())

    def member_compliant(self, value: str) -> bool:
        return value == self._desired

    def target(self, current: str) -> str:
        return self._desired

    def write(self, value: str) -> None:
        """Write every member named; on a refusal, put back the members already written, then raise."""
        values = self.split(value)
        before = self.read_each(values)
        done: list[str] = []
        for name, new in values.items():
            try:
                self.host.write(self.paths[name], new)
                done.append(name)
            except HostError as exc:
                for undo in done:
                    try:
                        self.host.write(self.paths[undo], before[undo])
                    except HostError as undo_exc:
                        raise TunableError(f"{exc}; and undoing {undo} failed: {undo_exc}") from None
                raise TunableError(str(exc)) from None


class Unavailable(ValueTunable):
    """A configured setting with nothing to act on here (no device matches a glob): doctor shows it as skip."""

    def __init__(self, family: str, id: str, desired: str, reason: str) -> None:
        self.family = family
        self.id = id
        self._desired = desired
        self.reason = reason

    def params(self) -> dict[str, str]:
        return {}

    def read(self) -> str:
        raise NotApplicable(self.reason)

    def compliant(self, current: str) -> bool:
        return False

    def write(self, value: str) -> None:
        raise TunableError(f"{self.id}: {self.reason}")

    def hint(self) -> str:
        return ""
