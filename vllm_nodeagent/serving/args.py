"""Checks of ``[vllm] args`` against the installed vLLM, without ever importing vLLM into the agent.

Two layers:

* a static table of flags that current vLLM no longer accepts or that are risky in production (data, always
  available, instant);
* a probe that runs the interpreter which will run vLLM (``[vllm] python``, else derived from the shebang of
  the resolved ``command[0]``) in a short-lived subprocess: it builds vLLM's own ``serve`` argument parser
  (``make_arg_parser`` from wherever this release keeps it, over ``FlexibleArgumentParser``), parses ``args``
  with it and reports which of a few probe flags (``--numa-bind-nodes``) the parser knows. Importing vLLM costs
  seconds and hundreds of MB; that cost stays in the child, which exits. The child runs as the vLLM user with the
  launch environment (never vLLM's code as root): a planted ``usercustomize.py`` gains nothing, and the caches
  it creates belong to the user who will run vLLM.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from typing import Optional

from vllm_nodeagent.host import paths, subp
from vllm_nodeagent.serving.env import RunAs, popen_user_kwargs

# Flags that vLLM removed or replaced. Value: what to write instead.
REMOVED_FLAGS: dict[str, str] = {
    "--speculative-model": 'removed; use --speculative-config \'{"model": ..., "num_speculative_tokens": N}\'',
    "--num-speculative-tokens": "removed; part of --speculative-config",
    "--speculative-draft-tensor-parallel-size": "removed; part of --speculative-config",
    "--speculative-max-model-len": "removed; part of --speculative-config",
    "--ngram-prompt-lookup-max": "removed; part of --speculative-config (method ngram)",
    "--ngram-prompt-lookup-min": "removed; part of --speculative-config (method ngram)",
    "--scheduler-delay-factor": "removed (V0 scheduler option)",
    "--swap-space": "removed (CPU swap space was a V0 feature)",
    "--use-v2-block-manager": "removed (the V2 block manager is the only one)",
    "--num-lookahead-slots": "removed (V0 scheduler option)",
}

# Flags that work but cost a lot in production. Value: why.
RISKY_FLAGS: dict[str, str] = {
    "--enforce-eager": "disables CUDA graphs: markedly lower decode throughput",
    "--trust-remote-code": "runs Python code shipped with the model repository",
    "--disable-custom-all-reduce": "falls back to NCCL all-reduce: slower tensor parallelism",
}

# Flags whose presence in the installed parser the launcher needs to know.
NUMA_BIND_FLAG = "--numa-bind"
NUMA_BIND_NODES_FLAG = "--numa-bind-nodes"
PROBE_FLAGS = (NUMA_BIND_FLAG, NUMA_BIND_NODES_FLAG)

PROBE_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Finding:
    flag: str
    kind: str  # "removed" | "risky" | "rejected"
    message: str


def normalize_flag(arg: str) -> Optional[str]:
    """``--foo_bar=1`` → ``--foo-bar``; None for values and positionals (vLLM accepts either spelling)."""
    if not arg.startswith("--") or arg == "--":
        return None
    name = arg.split("=", 1)[0]
    return "--" + name[2:].replace("_", "-")


def static_findings(args: list[str]) -> list[Finding]:
    """Removed and risky flags in ``args``, from the table (no vLLM needed)."""
    out: list[Finding] = []
    for arg in args:
        flag = normalize_flag(arg)
        if flag is None:
            continue
        if flag in REMOVED_FLAGS:
            out.append(Finding(flag, "removed", REMOVED_FLAGS[flag]))
        elif flag in RISKY_FLAGS:
            out.append(Finding(flag, "risky", RISKY_FLAGS[flag]))
    return out


# -- which interpreter runs vLLM ----------------------------------------------------------------------------
def _looks_like_python(path: str) -> bool:
    base = os.path.basename(path)
    return base.startswith("python") and (base[6:] == "" or base[6:].replace(".", "").isdigit())


def resolve_python(command: list[str], python: str = "", path_env: Optional[str] = None) -> tuple[str, str]:
    """(interpreter, "") or ("", why not). ``python`` wins; else ``command[0]`` itself when it is an
    interpreter; else the interpreter named by the shebang of the resolved ``command[0]``."""
    if python:
        return (python, "") if os.access(python, os.X_OK) else ("", f"[vllm] python {python} is not executable")
    if not command:
        return "", "no command"
    exe = command[0] if "/" in command[0] else shutil.which(command[0], path=path_env)
    if not exe:
        return "", f"{command[0]!r} not found on PATH"
    if _looks_like_python(exe):
        return exe, ""
    try:
        first = paths.read_capped(exe, 512).split(b"\n", 1)[0]
    except OSError as exc:
        return "", f"cannot read {exe}: {exc.strerror}"
    if not first.startswith(b"#!"):
        return "", f"{exe} has no #! line (not a Python entry point)"
    parts = first[2:].decode(errors="replace").split()
    if not parts:
        return "", f"{exe}: empty #! line"
    interp = parts[0]
    if os.path.basename(interp) == "env":
        names = [p for p in parts[1:] if not p.startswith("-")]
        found = shutil.which(names[0], path=path_env) if names else None
        if not found:
            return "", f"{exe}: #! names {' '.join(parts)}, not found on PATH"
        interp = found
    if not _looks_like_python(interp):
        return "", f"{exe}: #! interpreter {interp} is not Python"
    return interp, ""


# -- the probe ----------------------------------------------------------------------------------------------
# Runs in the child interpreter, as the vLLM user. Prints one JSON object on stdout. Must work on any Python vLLM
# supports. The serve parser has moved between releases (vllm.entrypoints.openai.cli_args until ~0.2x,
# vllm.entrypoints.launchers.cli_args in 0.32): the known homes first, then any ``cli_args.py`` under vllm's
# entrypoints that defines ``make_arg_parser`` (a file search, no import walk).
_PROBE_CODE = r"""
import contextlib, importlib, io, json, os, sys
req = json.loads(sys.argv[1])
out = {"available": False, "reason": "", "version": "", "error": "", "accepts": {}, "uid": os.getuid(),
       "parser": ""}
HOMES = ("vllm.entrypoints.openai.cli_args", "vllm.entrypoints.launchers.cli_args", "vllm.entrypoints.cli_args")
def candidates():
    for name in HOMES:
        yield name
    spec = importlib.util.find_spec("vllm.entrypoints")
    for base in (spec.submodule_search_locations or []) if spec else []:
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            if "cli_args.py" in filenames:
                with open(os.path.join(dirpath, "cli_args.py"), encoding="utf-8", errors="replace") as fh:
                    if "def make_arg_parser" not in fh.read():
                        continue
                rel = os.path.relpath(dirpath, base).replace(os.sep, ".")
                name = "vllm.entrypoints." + ("" if rel == "." else rel + ".") + "cli_args"
                if name not in HOMES:
                    yield name
try:
    import importlib.util
    if importlib.util.find_spec("vllm") is None:
        out["reason"] = "vllm is not importable by " + sys.executable
        print(json.dumps(out)); sys.exit(0)
    try:
        from vllm.utils.argparse_utils import FlexibleArgumentParser
    except ImportError:
        from vllm.utils import FlexibleArgumentParser
    make_arg_parser, tried = None, []
    for name in candidates():
        try:
            make_arg_parser = getattr(importlib.import_module(name), "make_arg_parser")
            out["parser"] = name
            break
        except (ImportError, AttributeError) as exc:
            tried.append("%s (%s)" % (name, type(exc).__name__))
    if make_arg_parser is None:
        raise ImportError("no make_arg_parser in " + ", ".join(tried))
    try:
        from vllm import __version__ as v
        out["version"] = str(v)
    except ImportError:
        out["version"] = "unknown"
    parser = make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))
except Exception as exc:
    out["reason"] = "cannot build vLLM's argument parser: %s: %s" % (type(exc).__name__, exc)
    print(json.dumps(out)); sys.exit(0)
out["available"] = True
try:  # what identifies this install, for the agent's probe cache (a pip upgrade replaces the dist-info dir)
    out["install"] = [os.path.realpath(sys.executable)]
    for d in importlib.util.find_spec("vllm").submodule_search_locations or []:
        out["install"].append(os.path.realpath(d))
        parent = os.path.dirname(os.path.realpath(d))
        out["install"] += [os.path.join(parent, n) for n in sorted(os.listdir(parent))
                           if n.startswith("vllm") and n.endswith(".dist-info")]
except Exception:
    out["install"] = []
known = set(getattr(parser, "_option_string_actions", {}))
out["accepts"] = {f: f in known for f in req["probe"]}
err = io.StringIO()
try:
    with contextlib.redirect_stderr(err):
        parser.parse_args(req["args"])
except SystemExit as exc:
    if exc.code not in (0, None):
        lines = [l for l in err.getvalue().strip().splitlines() if l.strip()]
        out["error"] = lines[-1] if lines else "argument parsing failed"
except Exception as exc:
    out["error"] = "%s: %s" % (type(exc).__name__, exc)
print(json.dumps(out))
"""


@dataclass
class ProbeResult:
    available: bool  # vLLM's parser could be built
    reason: str = ""  # why not (when not available)
    version: str = ""
    error: str = ""  # the parser's complaint about args ("" = accepted)
    accepts: dict[str, bool] = field(default_factory=dict)
    python: str = ""
    uid: int = -1  # the uid the probe ran as (-1: it did not run)
    parser: str = ""  # the module vLLM's serve parser came from
    install: list[str] = field(default_factory=list)  # interpreter, vllm package and dist-info dirs (cache stamps)
    cached: bool = False  # taken from the probe cache (probe_cache.py), the child did not run

    def accepts_flag(self, flag: str) -> bool:
        return self.available and self.accepts.get(flag, False)


def probe(
    python: str,
    args: list[str],
    *,
    probe_flags: tuple[str, ...] = PROBE_FLAGS,
    env: Optional[dict[str, str]] = None,
    timeout: float = PROBE_TIMEOUT_S,
    run_as: Optional[RunAs] = None,
) -> ProbeResult:
    """Ask the installed vLLM (in a child ``python``, as ``run_as`` when given) whether it accepts ``args``."""
    request = json.dumps({"args": list(args), "probe": list(probe_flags)})
    child_env = dict(env) if env is not None else {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    try:
        proc = subp.run(
            [python, "-c", _PROBE_CODE, request], timeout, env=child_env, cwd="/", user=popen_user_kwargs(run_as)
        )
    except subp.CommandError as exc:
        return ProbeResult(False, reason=str(exc), python=python)
    line = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    try:
        data = json.loads(line)
    except ValueError:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return ProbeResult(False, reason=f"{python} probe failed (exit {proc.returncode}): {tail}", python=python)
    return ProbeResult(
        available=bool(data.get("available")),
        reason=str(data.get("reason", "")),
        version=str(data.get("version", "")),
        error=str(data.get("error", "")),
        accepts={str(k): bool(v) for k, v in dict(data.get("accepts", {})).items()},
        python=python,
        uid=int(data.get("uid", -1)),
        parser=str(data.get("parser", "")),
        install=[str(p) for p in list(data.get("install", []))],
    )


def probe_for(
    command: list[str],
    args: list[str],
    python: str = "",
    path_env: Optional[str] = None,
    env: Optional[dict[str, str]] = None,
    run_as: Optional[RunAs] = None,
) -> ProbeResult:
    """Resolve the interpreter, then probe; an unresolvable one is a skip with the reason."""
    interp, why = resolve_python(command, python, path_env)
    if not interp:
        return ProbeResult(False, reason=why)
    return probe(interp, args, env=env, run_as=run_as)
