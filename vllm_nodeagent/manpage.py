"""vllm-nodeagent(8) in roff, generated from the argparse parser and the operator text in cli.py, so --help and
the man page come from one source. ``python -m vllm_nodeagent.manpage > packaging/files/vllm-nodeagent.8``
refreshes the checked-in page; tests/test_cli_help.py fails when the two differ, and the packages ship it."""

from __future__ import annotations

import argparse
import sys

from vllm_nodeagent import cli, cli_text
from vllm_nodeagent.config import DEFAULT_CONFIG_PATH


def esc(text: str) -> str:
    """roff-safe text: backslashes and hyphens escaped, no line starting with a control character."""
    out = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + ln) if ln[:1] in ".'" else ln for ln in out.split("\n"))


def _flags(action: argparse.Action) -> str:
    names = ", ".join(f"\\fB{esc(o)}\\fR" for o in action.option_strings)
    if action.nargs == 0:
        return names
    metavar = action.metavar or (
        "{" + ",".join(action.choices) + "}" if action.choices else (action.dest or "").upper()
    )
    more = " ..." if action.nargs in ("+", "*") else ""
    return f"{names} \\fI{esc(str(metavar))}\\fR{more}"


def _options(parser: argparse.ArgumentParser, skip_global: bool) -> list[str]:
    lines: list[str] = []
    globals_ = {"--root", "--config", "--log-format"}
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if skip_global and set(action.option_strings) & globals_:
            continue
        if action.help == argparse.SUPPRESS:
            continue
        head = _flags(action) if action.option_strings else f"\\fI{esc(str(action.metavar or action.dest))}\\fR"
        lines += [".TP", head, esc(action.help or "")]
    return lines


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def render() -> str:
    parser = cli.build_parser()
    out = [
        '.TH VLLM\\-NODEAGENT 8 "" "vllm-nodeagent" "System Administration"',
        ".SH NAME",
        "vllm\\-nodeagent \\- tune a GPU server for vLLM and keep it tuned",
        ".SH SYNOPSIS",
        "\\fBvllm\\-nodeagent\\fR [\\fB\\-\\-root\\fR \\fIDIR\\fR] [\\fB\\-\\-config\\fR \\fIFILE\\fR] "
        "[\\fB\\-\\-log\\-format\\fR \\fIconsole\\fR|\\fIjson\\fR] \\fICOMMAND\\fR [\\fIoptions\\fR]",
        ".SH DESCRIPTION",
        esc(" ".join(cli_text.DESCRIPTION.split())),
        ".PP",
        "The global options may come before or after the command.",
        ".SH GLOBAL OPTIONS",
        *_options(parser, skip_global=False),
        ".SH COMMANDS",
    ]
    for name, sub in _subparsers(parser).items():
        summary, text, examples = cli_text.COMMANDS[name]
        out += [f".SS {esc(name)} \\(em {esc(summary)}", esc(text)]
        for leaf in [sub, *_subparsers(sub).values()]:
            usage = " ".join(leaf.format_usage().split()[1:])
            out += [".PP", f"\\fB{esc(usage)}\\fR", *_options(leaf, skip_global=True)]
        out += [".PP", "Examples:", ".RS", ".nf", *(esc(e) for e in examples), ".fi", ".RE"]
    out += [".SH EXIT STATUS"]
    for line in cli_text.EXIT_STATUS.splitlines()[1:]:
        code, _, what = line.strip().partition(" ")
        out += [".TP", f"\\fB{code}\\fR", esc(what.strip())]
    out += [
        ".SH ENVIRONMENT",
        ".TP",
        "\\fBVLLM_NODEAGENT_ROOT\\fR",
        "the default of \\fB\\-\\-root\\fR.",
        ".TP",
        "\\fBVLLM_NODEAGENT_DEBUG\\fR=1",
        "an internal error prints its traceback.",
        ".TP",
        "\\fBNO_COLOR\\fR",
        "no colour in doctor's table, even on a terminal.",
        ".SH FILES",
        ".TP",
        f"\\fI{esc(DEFAULT_CONFIG_PATH)}\\fR",
        "the configuration (TOML); a documented sample ships beside it.",
        ".TP",
        "\\fI/var/lib/vllm\\-nodeagent/originals.json\\fR",
        "the journal of original values that \\fBrevert\\fR restores.",
        ".SH SEE ALSO",
        "\\fBsystemctl\\fR(1), \\fBsysctl\\fR(8), \\fBnumactl\\fR(8), \\fBnvidia\\-smi\\fR(1); "
        "/usr/share/doc/vllm\\-nodeagent/",
    ]
    return "\n".join(out) + "\n"


if __name__ == "__main__":  # pragma: no cover
    sys.stdout.write(render())
