"""Architecture rules of the package layout (issue 15), checked by reading the source with ``ast``.

- The library sits below the command line: no module outside cli.py and vllm_nodeagent/commands/ imports
  ``vllm_nodeagent.cli`` or ``vllm_nodeagent.commands`` (what a command hands the library is context.Context).
- The serving package never imports the daemon back (the daemon ↔ launcher ↔ supervisor cycle of before).
- Only the command layer prints: ``print(``, ``sys.stdout.write`` and ``sys.stderr.write`` appear in cli.py and
  commands/* only; context.print_json (the JSON output helper) is the one exception and only commands call it.
  log.py writes log lines through the stream it was configured with (stderr), never through these.
- Small modules: none over MAX_LINES lines.
- Only the ground floor touches files: no module outside vllm_nodeagent/host/ calls FORBIDDEN_FILE_CALLS or a
  FORBIDDEN_PATH_METHODS method (issue 22: every escape from the seam was a way around its checks).
- One status (issue 26): a check's status is ``checks.status.Status``; no other module spells ``"pass"``,
  ``"warn"``, ``"fail"`` or ``"skip"`` as a string literal (set or compared).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "vllm_nodeagent"
ABOVE_THE_LIBRARY = ("vllm_nodeagent.cli", "vllm_nodeagent.commands")
OUTPUT_HELPER = "context.py"  # print_json: what commands print JSON with (one place for its format)
MAX_LINES = 450
# Issue 22: file calls only the ground floor (vllm_nodeagent/host/) makes; a call through an alias or a variable is
# beyond what ast can tell, the rest is caught. procsafe's /proc and psutil rule is OPENERS below.
FORBIDDEN_FILE_CALLS = ["open", "io.open", "os.open", "os.replace", "os.rename", "os.stat", "os.lstat", "os.listdir"]
FORBIDDEN_FILE_CALLS += ["os.scandir", "os.chmod", "os.chown", "os.lchown", "os.fchmod", "os.fchown"]
FORBIDDEN_PATH_METHODS = ["open", "read_text", "write_text", "read_bytes", "write_bytes", "chmod", "lchmod"]


def modules() -> dict[str, ast.Module]:
    """Every module of the package by its path relative to the package (``commands/doctor.py``)."""
    return {
        p.relative_to(PACKAGE).as_posix(): ast.parse(p.read_text(encoding="utf-8"), str(p))
        for p in sorted(PACKAGE.rglob("*.py"))
    }


def is_command_layer(rel: str) -> bool:
    return rel in ("cli.py", "manpage.py") or rel.startswith("commands/")  # manpage.py renders the CLI


def imported_names(tree: ast.Module, rel: str) -> set[str]:
    """Absolute names of every module an import statement anywhere in the module (lazy ones too) names."""
    package = ["vllm_nodeagent", *rel.split("/")[:-1]]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names.add(module)
            names.update(f"{module}.{a.name}" for a in node.names)  # `from vllm_nodeagent import cli`
    return names


def above_the_library(name: str) -> bool:
    return any(name == top or name.startswith(top + ".") for top in ABOVE_THE_LIBRARY)


def test_the_library_never_imports_the_cli_or_the_commands() -> None:
    offenders = {
        rel: sorted(n for n in imported_names(tree, rel) if above_the_library(n))
        for rel, tree in modules().items()
        if not is_command_layer(rel)
    }
    assert {rel: names for rel, names in offenders.items() if names} == {}


def test_the_import_reader_sees_lazy_relative_and_from_package_imports() -> None:
    """The rule above could pass by reading nothing: the reader must see each form an upward import can take."""
    tree = ast.parse(
        "def f():\n    from vllm_nodeagent import cli\n    from ..commands import doctor\n"
        "import vllm_nodeagent.commands.topology\n"
    )
    names = imported_names(tree, "checks/base.py")
    assert {"vllm_nodeagent.cli", "vllm_nodeagent.commands.doctor", "vllm_nodeagent.commands.topology"} <= names
    assert all(above_the_library(n) for n in ("vllm_nodeagent.cli", "vllm_nodeagent.commands.doctor"))
    assert not above_the_library("vllm_nodeagent.client")


def test_the_serving_package_never_imports_the_daemon() -> None:
    """The old daemon <-> launcher <-> supervisor cycle: serving/ is what the daemon's serve keeper uses, so
    nothing in it may import vllm_nodeagent.daemon (lazily included) back."""
    offenders = {
        rel: sorted(
            n
            for n in imported_names(tree, rel)
            if n == "vllm_nodeagent.daemon" or n.startswith("vllm_nodeagent.daemon.")
        )
        for rel, tree in modules().items()
        if rel.startswith("serving/")
    }
    assert any(rel.startswith("serving/") for rel in modules())  # the rule reads the package it guards
    assert {rel: names for rel, names in offenders.items() if names} == {}


def output_calls(tree: ast.Module) -> list[str]:
    """``line: call`` of every print() and sys.stdout/stderr.write() call."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Name) and f.id == "print":
            found.append(f"{node.lineno}: print")
        elif (
            isinstance(f, ast.Attribute)
            and f.attr == "write"
            and isinstance(f.value, ast.Attribute)
            and f.value.attr in ("stdout", "stderr")
            and isinstance(f.value.value, ast.Name)
            and f.value.value.id == "sys"
        ):
            found.append(f"{node.lineno}: sys.{f.value.attr}.write")
    return sorted(found, key=lambda call: int(call.split(":")[0]))


def test_only_the_command_layer_prints() -> None:
    offenders = {
        rel: output_calls(tree) for rel, tree in modules().items() if not is_command_layer(rel) and rel != OUTPUT_HELPER
    }
    assert {rel: calls for rel, calls in offenders.items() if calls} == {}


def test_only_the_command_layer_uses_the_output_helper() -> None:
    offenders = sorted(
        rel
        for rel, tree in modules().items()
        if not is_command_layer(rel) and "vllm_nodeagent.context.print_json" in imported_names(tree, rel)
    )
    assert offenders == []


def test_the_output_reader_sees_print_and_stream_writes() -> None:
    tree = ast.parse(
        "import sys\nprint('x')\nsys.stdout.write('y')\nsys.stderr.write('z')\n"
        "s = 'print(1)'\nstream.write('log line')\n"
    )
    assert output_calls(tree) == ["2: print", "3: sys.stdout.write", "4: sys.stderr.write"]


def test_no_module_is_over_the_line_limit() -> None:
    lengths = {
        p.relative_to(PACKAGE).as_posix(): len(p.read_text(encoding="utf-8").splitlines())
        for p in sorted(PACKAGE.rglob("*.py"))
    }
    assert {rel: n for rel, n in lengths.items() if n > MAX_LINES} == {}


# -- the ground floor (issue 22): processes are read through host/proc.py only ------------------------------------
GROUND_FLOOR = "host/"
OPENERS = {"open", "os.open", "io.open", "Path", "pathlib.Path", "os.listdir", "os.scandir", "os.readlink", "os.stat"}
OPENERS |= {"os.lstat", "os.path.exists", "os.path.isdir", "os.path.islink"}


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _literal_prefix(node: ast.expr) -> str:
    """The constant start of a str literal or f-string ("/proc/" of f"/proc/{pid}/stat")."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr) and node.values:
        return _literal_prefix(node.values[0])  # type: ignore[arg-type]
    return ""


def proc_escapes(tree: ast.Module) -> list[str]:
    """``line: what`` of every psutil import and every open/listdir/Path of a literal "/proc/..." path."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "psutil" for a in node.names):
            found.append(f"{node.lineno}: import psutil")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "psutil":
            found.append(f"{node.lineno}: from psutil")
        elif (
            isinstance(node, ast.Call)
            and _dotted(node.func) in OPENERS
            and node.args
            and _literal_prefix(node.args[0]).startswith("/proc")
        ):
            found.append(f"{node.lineno}: {_dotted(node.func)} /proc")
    return sorted(found, key=lambda s: int(s.split(":")[0]))


def test_only_the_ground_floor_reads_proc_or_imports_psutil() -> None:
    offenders = {rel: proc_escapes(tree) for rel, tree in modules().items() if not rel.startswith(GROUND_FLOOR)}
    assert {rel: found for rel, found in offenders.items() if found} == {}


def test_the_proc_reader_sees_psutil_and_literal_proc_opens() -> None:
    tree = ast.parse(
        "import psutil\nfrom psutil import Process\nopen(f'/proc/{pid}/stat')\nos.listdir('/proc')\n"
        "open('/etc/passwd')\nos.open(f'/proc/{p}/status', 0)\nhost.read('/proc/meminfo')\n"
    )
    assert proc_escapes(tree) == [
        "1: import psutil",
        "2: from psutil",
        "3: open /proc",
        "4: os.listdir /proc",
        "6: os.open /proc",
    ]


# -- the ground floor (issue 22): files are opened, replaced, listed, stat'ed and chmod'ed through host/ only -------
def file_escapes(tree: ast.Module) -> list[str]:
    """``line: what`` of every forbidden file call, os import of one, and Path-method call (``x.read_text()``).
    A method call on a capitalised name (``Nvml.open()``, a class) is not a Path's."""
    found = []
    os_names = {n.split(".")[1] for n in FORBIDDEN_FILE_CALLS if n.startswith("os.")}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "os":
            found += [f"{node.lineno}: from os import {a.name}" for a in node.names if a.name in os_names]
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name in FORBIDDEN_FILE_CALLS:
            found.append(f"{node.lineno}: {name}()")
        elif isinstance(node.func, ast.Attribute) and node.func.attr in FORBIDDEN_PATH_METHODS:
            receiver = node.func.value
            if not (isinstance(receiver, ast.Name) and receiver.id[:1].isupper()):
                found.append(f"{node.lineno}: .{node.func.attr}()")
    return sorted(found, key=lambda f: int(f.split(":")[0]))


def test_only_the_ground_floor_touches_files() -> None:
    offenders = {rel: file_escapes(tree) for rel, tree in modules().items() if not rel.startswith(GROUND_FLOOR)}
    assert {rel: f for rel, f in offenders.items() if f} == {}


def test_the_file_reader_sees_each_form() -> None:
    """The rule above could pass by reading nothing: each form an escape takes is seen, a class method is not."""
    tree = ast.parse(
        "open(p)\nos.replace(a, b)\nfrom os import chmod\nPath(p).read_text()\nself.host.path(x).write_bytes(b)\n"
        "os.fchown(fd, 0, 0)\nNvml.open()\nos.path.join(a, b)\n"
    )
    assert file_escapes(tree) == [
        "1: open()",
        "2: os.replace()",
        "3: from os import chmod",
        "4: .read_text()",
        "5: .write_bytes()",
        "6: os.fchown()",
    ]


# -- accounts (issue 26.8): users and groups come from host/accounts.py only (the --root tree's files, never NSS) --
ACCOUNT_MODULES = {"pwd", "grp", "spwd", "getpass"}
ACCOUNT_CALLS = {"os.getlogin", "os.getgrouplist", "os.initgroups"}


def account_lookups(tree: ast.Module) -> list[str]:
    """``line: what`` of every import of an account module and every call that asks NSS for an account."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"{node.lineno}: import {a.name}" for a in node.names if a.name in ACCOUNT_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "") in ACCOUNT_MODULES:
            found.append(f"{node.lineno}: from {node.module}")
        elif isinstance(node, ast.Call) and _dotted(node.func) in ACCOUNT_CALLS:
            found.append(f"{node.lineno}: {_dotted(node.func)}")
    return found


def test_only_the_account_model_looks_up_accounts() -> None:
    found = {rel: account_lookups(tree) for rel, tree in modules().items() if rel != "host/accounts.py"}
    assert {rel: f for rel, f in found.items() if f} == {}


def test_the_account_reader_sees_each_form() -> None:
    tree = ast.parse("import pwd\nfrom grp import getgrnam\nimport getpass\nos.getlogin()\nos.getuid()\n")
    assert account_lookups(tree) == ["1: import pwd", "2: from grp", "3: import getpass", "4: os.getlogin"]


# -- one status (issue 26) ----------------------------------------------------------------------------------------
STATUS_MODULE = "checks/status.py"
STATUS_VALUES = {"pass", "warn", "fail", "skip"}


def status_literals(tree: ast.Module) -> list[str]:
    """``line: 'value'`` of every string constant that spells a check status."""
    return [
        f"{node.lineno}: {node.value!r}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in STATUS_VALUES
    ]


def test_statuses_are_spelled_only_by_the_status_enum() -> None:
    found = {rel: status_literals(tree) for rel, tree in modules().items() if rel != STATUS_MODULE}
    assert status_literals(modules()[STATUS_MODULE])  # the rule reads the module that defines them
    assert {rel: lits for rel, lits in found.items() if lits} == {}


def test_the_status_reader_sees_each_form() -> None:
    tree = ast.parse('CheckResult("x", "warn")\nif s == "fail": pass\nCOLOURS = {"skip": 1}\nf"{x}pass"\n')
    assert status_literals(tree) == ["1: 'warn'", "2: 'fail'", "3: 'skip'", "4: 'pass'"]  # f-string parts too
