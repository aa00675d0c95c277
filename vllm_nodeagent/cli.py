"""Command line: argparse, the dispatch table and the error boundary; each command lives in vllm_nodeagent.commands.
The operator-facing text (--help and the man page, vllm_nodeagent/manpage.py) is DESCRIPTION, COMMANDS and
EXIT_STATUS in cli_text.py.

Exit codes: 0 ok; 1 a setting or check failed; 2 usage or config error; 3 a host or state fault (not root, the
state dir or journal unusable or refused, the journal lock not obtained, a host file unreadable); 4 an internal
error (a bug in the agent: one line naming the exception; VLLM_NODEAGENT_DEBUG=1 adds the traceback); 130
interrupted. No traceback reaches a user: the boundary in ``main`` turns every error into one line on stderr.
``revert`` exits 0 once everything restorable was restored (entries it reports ``unrestorable`` are kept, not
failures); ``revert --forget`` of an id not in the journal is 2; ``journal show`` is 1 when the journal has damaged
lines.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import textwrap
from typing import Callable, Optional, TextIO, cast

from vllm_nodeagent import __version__, log
from vllm_nodeagent.cli_text import COMMANDS, DESCRIPTION, EXIT_STATUS
from vllm_nodeagent.config import DEFAULT_CONFIG_PATH, Config, ConfigError
from vllm_nodeagent.context import EXIT_HOST, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_USAGE, Context, read_config
from vllm_nodeagent.host import Host
from vllm_nodeagent.host.tty import Printable
from vllm_nodeagent.nvml import NvmlOpener


def parse_gpu_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--gpus: expected comma-separated indices, got {text!r}") from None
    if any(v < 0 for v in values) or not values:
        raise argparse.ArgumentTypeError(f"--gpus: expected comma-separated indices, got {text!r}")
    return values


def examples(name: str) -> str:
    return "examples:\n" + "\n".join(f"  {e}" for e in COMMANDS[name][2])


def global_options(parser: argparse.ArgumentParser, top: bool) -> None:
    """--root, --config, --log-format: accepted before or after the command (``doctor --config X``). Defaults are
    SUPPRESS here and filled in by ``parse_args`` so a value given after the command is not overwritten."""
    g = parser.add_argument_group("global options")
    g.add_argument(
        "--root",
        default=argparse.SUPPRESS,
        metavar="DIR",
        help="a host tree to work on instead of / (every /sys, /proc, /etc, /var path under it; default: "
        "$VLLM_NODEAGENT_ROOT or /)",
    )
    g.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        metavar="FILE",
        help=f"config file (default: {DEFAULT_CONFIG_PATH} under the root; missing = built-in defaults)",
    )
    g.add_argument(
        "--log-format",
        choices=("console", "json"),
        default=argparse.SUPPRESS,
        help="how warnings and errors on stderr look (default: [agent] log_format, else console)",
    )
    if top:
        g.add_argument("--version", action="version", version=f"%(prog)s {__version__}")


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(
        prog="vllm-nodeagent",
        description=DESCRIPTION,
        epilog="commands, examples:\n"
        + "\n".join(f"  {COMMANDS[n][2][0]:<44} {COMMANDS[n][0]}" for n in COMMANDS)
        + "\n\n"
        + EXIT_STATUS
        + "\n\n'vllm-nodeagent COMMAND --help' for a command's options; man vllm-nodeagent for all of it.",
        formatter_class=fmt,
    )
    global_options(p, top=True)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def command(name: str) -> argparse.ArgumentParser:
        summary, text, _ = COMMANDS[name]
        c = sub.add_parser(
            name, help=summary, description=textwrap.fill(text, 100), epilog=examples(name), formatter_class=fmt
        )
        global_options(c, top=False)
        return c

    json_help = "print the result as JSON (docs/json.md) instead of text"
    t = command("topology")
    t.add_argument("--json", action="store_true", help=json_help)

    d = command("doctor")
    d.add_argument("--json", action="store_true", help=json_help)
    d.add_argument("--strict", action="store_true", help="exit 1 on a warning too, not only on a failure")
    d.add_argument(
        "--only",
        nargs="+",
        metavar="ID",
        default=None,
        help="only these check ids or prefixes (sysctl, gpu., ...); an unknown id is an error naming the known ones",
    )
    d.add_argument(
        "--wide", action="store_true", help="on a terminal too: one line per check, nothing cut (as when piped)"
    )
    d.add_argument(
        "--slurm",
        nargs="?",
        const="health",
        choices=("health", "prolog", "epilog"),
        default=None,
        help="run as Slurm's HealthCheckProgram (default), Prolog or Epilog: drain the node on a FAIL, resume "
        "a node it drained once doctor passes (docs/slurm.md)",
    )
    d.add_argument("--node", default=None, help="--slurm: the Slurm node name (default: $SLURMD_NODENAME)")
    d.add_argument("--drain-on-warn", action="store_true", help="--slurm: drain on a WARN too")

    a = command("apply")
    a.add_argument("--dry-run", action="store_true", help="write nothing; show what would be written (exit 5 if any)")
    a.add_argument(
        "--only", nargs="+", metavar="ID", default=None, help="setting ids or prefixes (sysctl, thp.enabled, ...)"
    )
    a.add_argument("--json", action="store_true", help=json_help)

    r = command("revert")
    r.add_argument("--json", action="store_true", help=json_help)
    what = r.add_mutually_exclusive_group()
    what.add_argument("--dry-run", action="store_true", help="say what revert would do; change nothing")
    what.add_argument(
        "--forget",
        nargs="+",
        metavar="ID",
        default=None,
        help="drop these entries from the journal without restoring them (one revert reports unrestorable)",
    )

    jo = command("journal")
    jo_sub = jo.add_subparsers(dest="action", metavar="ACTION")
    jo_sub.required = True
    js = jo_sub.add_parser(
        "show", help="every journaled setting: original, written, when, and its state now", epilog=examples("journal")
    )
    global_options(js, top=False)
    js.add_argument("--json", action="store_true", help=json_help)

    w = command("prewarm")
    w.add_argument("--json", action="store_true", help=json_help)
    w.add_argument("--budget", default=None, help="bytes (e.g. 64G) or a fraction of MemAvailable (e.g. 0.5)")
    w.add_argument("--lock", action="store_true", help="mlock the pages and hold them until interrupted")
    w.add_argument("--threads", type=int, default=None, metavar="N", help="reader threads (default: by device)")
    w.add_argument(
        "targets", nargs="*", metavar="TARGET", help="file, directory or HF model id (default: [prewarm] paths)"
    )

    la = command("launch")
    la.add_argument("--dry-run", action="store_true", help="print the launch plan; start nothing")
    la.add_argument("--json", action="store_true", help=json_help + " (with --dry-run)")
    la.add_argument("--gpus", type=parse_gpu_list, default=None, help="GPU indices, e.g. 2,3 (default: [vllm] gpus)")

    ru = command("run")
    ru.add_argument(
        "--layout",
        choices=("auto", "split", "single"),
        default="auto",
        help="split: host work only, vLLM runs in vllm-nodeagent-serve.service; single: also "
        "launch vLLM; auto (default): split when that unit is enabled or active",
    )

    se = command("serve")
    se.add_argument("--gpus", type=parse_gpu_list, default=None, help="GPU indices, e.g. 2,3")
    se.add_argument(
        "--configured",
        action="store_true",
        help="start nothing; exit 0 when [vllm] has something to serve as user vllm, 1 when not",
    )

    rl = command("reload")
    rl.add_argument("pid", nargs="?", type=int, default=None, metavar="PID", help="the daemon (default: $MAINPID)")
    return p


def parse_args(parser: argparse.ArgumentParser, argv: Optional[list[str]]) -> argparse.Namespace:
    args = parser.parse_args(argv)
    if not hasattr(args, "root"):
        args.root = os.environ.get("VLLM_NODEAGENT_ROOT", "/")
    if not hasattr(args, "config"):
        args.config = None
    if not hasattr(args, "log_format"):
        args.log_format = None
    if args.root == "":
        parser.error("--root: an empty path is not a root (use / or a directory)")
    return args


# Commands live in their own modules; importing lazily keeps `doctor` and `topology` fast.
# The long-running services log through structlog; one-shot commands render the same lines without its imports.
LONG_RUNNING = frozenset({"run", "serve"})

_COMMANDS: dict[str, str] = {
    "topology": "vllm_nodeagent.commands.topology:cmd_topology",
    "doctor": "vllm_nodeagent.commands.doctor:cmd_doctor",
    "apply": "vllm_nodeagent.commands.apply:cmd_apply",
    "revert": "vllm_nodeagent.commands.revert:cmd_revert",
    "journal": "vllm_nodeagent.commands.journal:cmd_journal",
    "prewarm": "vllm_nodeagent.commands.prewarm:cmd_prewarm",
    "launch": "vllm_nodeagent.commands.launch:cmd_launch",
    "run": "vllm_nodeagent.commands.run:cmd_run",
    "serve": "vllm_nodeagent.commands.serve:cmd_serve",
    "reload": "vllm_nodeagent.commands.reload:cmd_reload",
}
NO_CONFIG = frozenset({"reload"})  # the daemon judges its own config (and knows which file it is)

CommandFn = Callable[[Context, argparse.Namespace], int]


def _command(name: str) -> CommandFn:
    module, _, attr = _COMMANDS[name].partition(":")
    fn: CommandFn = getattr(importlib.import_module(module), attr)
    return fn


def main(
    argv: Optional[list[str]] = None,
    nvml_opener: Optional[NvmlOpener] = None,
    host_cls: type[Host] = Host,
) -> int:
    """Entry point. ``nvml_opener`` and ``host_cls`` let tests replay recorded NVML and kernel behaviour."""
    parser = build_parser()
    args = parse_args(parser, argv)
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = cast(TextIO, Printable(out)), cast(TextIO, Printable(err))  # no raw ESC shown
    try:
        return _main(args, nvml_opener, host_cls)
    finally:
        sys.stdout, sys.stderr = out, err


def _main(args: argparse.Namespace, nvml_opener: Optional[NvmlOpener], host_cls: type[Host]) -> int:
    try:
        return _run(args, nvml_opener, host_cls)
    except ConfigError as exc:
        print(f"vllm-nodeagent: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:  # the one boundary: known faults and bugs alike become one line
        line = host_fault(exc)
        if line is not None:
            print(f"vllm-nodeagent: {args.command}: {line}", file=sys.stderr)
            return EXIT_HOST
        return internal_error(args.command, exc)


def _run(args: argparse.Namespace, nvml_opener: Optional[NvmlOpener], host_cls: type[Host]) -> int:
    host = host_cls(args.root)
    if not host.root.is_dir():
        print(f"vllm-nodeagent: --root {args.root}: not a directory", file=sys.stderr)
        return EXIT_USAGE
    config = Config(path="(not read)") if args.command in NO_CONFIG else read_config(host, args.config)
    log_format = args.log_format or config.agent.log_format
    # The services (run, serve) log their progress for journald. Every command an operator runs in a terminal,
    # launch included, prints its results on stdout; stderr carries only warnings and errors, in the chosen format
    # (issue 26.6): launch's fault is its one error line, vLLM's own output passes through as it is.
    service = args.command in LONG_RUNNING
    log.configure(log_format, structured=service, level=log.INFO if service else log.WARNING)
    ctx = Context(host=host, config=config, config_arg=args.config, log_format=log_format, nvml_opener=nvml_opener)
    return _command(args.command)(ctx, args)


DEBUG_ENV = "VLLM_NODEAGENT_DEBUG"


def internal_error(command: str, exc: BaseException) -> int:
    """A bug: one line naming the exception; the traceback only on request (it helps a report, not a user)."""
    if os.environ.get(DEBUG_ENV) == "1":
        import traceback

        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    message = " ".join(str(exc).split()) or "(no message)"
    print(
        f"vllm-nodeagent: {command}: internal error: {type(exc).__name__}: {message} (a bug; rerun with "
        f"{DEBUG_ENV}=1 for the traceback, please report it)",
        file=sys.stderr,
    )
    return EXIT_INTERNAL


def host_fault(exc: BaseException) -> Optional[str]:
    """One line for a fault of the host or the state dir; None for anything else (a bug: see internal_error)."""
    from vllm_nodeagent.host import HostError
    from vllm_nodeagent.host.parse import ParseError
    from vllm_nodeagent.settings.journal import JournalError

    if isinstance(exc, (JournalError, HostError)):
        return " ".join(str(exc).split())
    if isinstance(exc, ParseError):
        return f"unexpected text from the kernel: {' '.join(str(exc).split())}"
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror or exc}"
    return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
