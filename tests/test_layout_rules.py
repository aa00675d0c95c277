"""Architecture rules of the package layout (issue 15), checked by reading the source with ``ast``.

- The library sits below the command line: no module outside cli.py and vllm_nodeagent/commands/ imports
  ``vllm_nodeagent.cli`` or ``vllm_nodeagent.commands`` (what a command hands the library is context.Context).
- The serving package never imports the daemon back (the daemon ↔ launcher ↔ supervisor cycle of before).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "vllm_nodeagent"
ABOVE_THE_LIBRARY = ("vllm_nodeagent.cli", "vllm_nodeagent.commands")


def modules() -> dict[str, ast.Module]:
    """Every module of the package by its path relative to the package (``commands/doctor.py``)."""
    return {p.relative_to(PACKAGE).as_posix(): ast.parse(p.read_text(encoding="utf-8"), str(p))
            for p in sorted(PACKAGE.rglob("*.py"))}


def is_command_layer(rel: str) -> bool:
    return rel == "cli.py" or rel.startswith("commands/")


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
    offenders = {rel: sorted(n for n in imported_names(tree, rel) if above_the_library(n))
                 for rel, tree in modules().items() if not is_command_layer(rel)}
    assert {rel: names for rel, names in offenders.items() if names} == {}


def test_the_import_reader_sees_lazy_relative_and_from_package_imports() -> None:
    """The rule above could pass by reading nothing: the reader must see each form an upward import can take."""
    tree = ast.parse("def f():\n    from vllm_nodeagent import cli\n    from ..commands import doctor\n"
                     "import vllm_nodeagent.commands.topology\n")
    names = imported_names(tree, "checks/base.py")
    assert {"vllm_nodeagent.cli", "vllm_nodeagent.commands.doctor", "vllm_nodeagent.commands.topology"} <= names
    assert all(above_the_library(n) for n in ("vllm_nodeagent.cli", "vllm_nodeagent.commands.doctor"))
    assert not above_the_library("vllm_nodeagent.client")


def test_the_serving_package_never_imports_the_daemon() -> None:
    """The old daemon <-> launcher <-> supervisor cycle: serving/ is what the daemon's serve keeper uses, so
    nothing in it may import vllm_nodeagent.daemon (lazily included) back."""
    offenders = {rel: sorted(n for n in imported_names(tree, rel)
                             if n == "vllm_nodeagent.daemon" or n.startswith("vllm_nodeagent.daemon."))
                 for rel, tree in modules().items() if rel.startswith("serving/")}
    assert any(rel.startswith("serving/") for rel in modules())  # the rule reads the package it guards
    assert {rel: names for rel, names in offenders.items() if names} == {}
