"""What every command receives: the host seam, the loaded config, how to reach NVML, the exit codes, JSON output.

Its own module so that library code which takes a ``Context`` never imports the CLI (cli.py and
``vllm_nodeagent.commands`` sit above the library; this module sits below both).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from typing import Any, Optional

from vllm_nodeagent.config import DEFAULT_CONFIG_PATH, Config, ConfigError, load_config
from vllm_nodeagent.host import Host
from vllm_nodeagent.nvml import Nvml, NvmlOpener, try_open

# Documented in cli.py (EXIT_STATUS: --help and the man page) and the README: 0 ok; 1 a setting or check failed;
# 2 usage or config error; 3 a host or state fault; 4 an internal error (a bug); 5 apply --dry-run: changes
# pending (as terraform plan -detailed-exitcode says 2); 130 interrupted.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_HOST, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
EXIT_PENDING = 5


@dataclass
class Context:
    """What every command gets: the host seam, the loaded config and how to reach NVML."""

    host: Host
    config: Config
    config_arg: Optional[str]  # --config as given (None = the default under the root)
    log_format: str
    nvml_opener: Optional[NvmlOpener] = None

    def nvml_not_read(self) -> bool:
        """Under --root with no recorded NVML supplied (tests replay one through ``nvml_opener``): the NVML of the
        machine this runs on says nothing about the tree, so it is not opened, and its absence is no fault."""
        return self.nvml_opener is None and not self.host.is_real

    def open_nvml(self) -> tuple[Optional[Nvml], str]:
        if self.nvml_not_read():
            # NVML answers for the running machine's GPUs, never for a --root tree's.
            return None, "NVML describes the running machine, not the --root tree"
        return try_open(self.nvml_opener)

    def reload_config(self) -> Config:
        return read_config(self.host, self.config_arg)

    def invocation(self) -> list[str]:
        """This agent as it was invoked, with the global options that select the tree and the config: what a fix
        command pasted from doctor must start with, so it acts where doctor looked (never the real host for a
        --root tree). Paths absolute, so the line works from any directory."""
        argv = self_argv()
        if not self.host.is_real:
            argv += ["--root", os.path.abspath(str(self.host.root))]
        if self.config_arg is not None:
            argv += ["--config", os.path.abspath(self.config_arg)]
        return argv


def self_argv(argv0: Optional[str] = None) -> list[str]:
    """The binary as invoked: its name where PATH finds this very file under it, else its absolute path; under
    ``python -m`` (or embedded, as in tests) the interpreter and the module."""
    a0 = sys.argv[0] if argv0 is None else argv0
    name = os.path.basename(a0)
    if not name.startswith("vllm-nodeagent"):
        return [sys.executable, "-m", "vllm_nodeagent.cli"]
    found = shutil.which(name)
    if found and os.path.realpath(found) == os.path.realpath(a0):
        return [name]
    return [os.path.abspath(a0)]


def read_config(host: Host, config_arg: Optional[str]) -> Config:
    if config_arg is None:
        refuse_dangling_default(host)
    return load_config(config_arg, host.path(DEFAULT_CONFIG_PATH))


def refuse_dangling_default(host: Host) -> None:
    """A missing default config means built-in defaults (manage nothing); a default config that is a symlink to
    nothing is a broken install, not "no config": say so instead of silently managing nothing."""
    lexical = os.path.join(str(host.root), DEFAULT_CONFIG_PATH.lstrip("/"))
    if os.path.islink(lexical) and not host.path(DEFAULT_CONFIG_PATH).exists():
        raise ConfigError(
            DEFAULT_CONFIG_PATH,
            f"a symlink to {os.readlink(lexical)}, which does not exist: fix the link or remove it "
            "(no file at all means built-in defaults)",
        )


SCHEMA_VERSION = 1  # docs/json.md: bumped on a change that breaks a reader (a key renamed, removed or retyped)


def print_json(data: Any, kind: Optional[str] = None) -> None:
    """One JSON document on stdout. A dict gets ``schema_version`` (and ``kind``: which output, whose schema is
    docs/schemas/<kind>.schema.json) first."""
    if isinstance(data, dict):
        data = {"schema_version": SCHEMA_VERSION, **({"kind": kind} if kind else {}), **data}
    json.dump(data, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")
