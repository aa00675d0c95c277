"""Check that a wheelhouse installs vllm-nodeagent offline on every supported CPython.

pip evaluates environment markers against the interpreter it runs on, not against --python-version,
so a wheelhouse downloaded on Python 3.11 can silently miss tomli for 3.9. This resolves the
dependency closure of the agent wheel for each target version (markers, Requires-Python and wheel
tags evaluated for that version) and fails naming what is missing.

usage: check_wheelhouse.py WHEELHOUSE ARCH VERSION... (ARCH: x86_64 | aarch64; VERSION: 3.9 ...)
"""

from __future__ import annotations

import sys
import zipfile
from email.parser import Parser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

MIN_GLIBC_MINOR = 28  # manylinux_2_28; every target (RHEL 9 has 2.34) has at least this


class Wheel:
    def __init__(self, path: Path) -> None:
        name, version, _build, tags = parse_wheel_filename(path.name)
        self.path = path
        self.name = name
        self.version: Version = version
        self.tags: frozenset[Tag] = tags
        with zipfile.ZipFile(path) as zf:
            meta_name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
            meta = Parser().parsestr(zf.read(meta_name).decode("utf-8"))
        self.requires_python = SpecifierSet(meta.get("Requires-Python", "") or "")
        self.requires = [Requirement(r) for r in meta.get_all("Requires-Dist") or []]


def supported_tags(py: tuple[int, int], arch: str) -> set[Tag]:
    platforms = [f"manylinux_2_{minor}_{arch}" for minor in range(MIN_GLIBC_MINOR, 4, -1)]
    platforms += [f"manylinux2014_{arch}", f"manylinux2010_{arch}", f"manylinux1_{arch}"]
    tags = set(cpython_tags(py, platforms=platforms))
    tags |= set(compatible_tags(py, interpreter=f"cp{py[0]}{py[1]}", platforms=platforms))
    return tags


def closure_problems(wheels: list[Wheel], root: str, pyver: str, arch: str) -> list[str]:
    major, _, minor = pyver.partition(".")
    py = (int(major), int(minor))
    tags = supported_tags(py, arch)
    env = {"python_version": pyver, "python_full_version": f"{pyver}.0", "extra": "",
           "platform_machine": arch, "sys_platform": "linux", "platform_system": "Linux",
           "os_name": "posix", "implementation_name": "cpython",
           "platform_python_implementation": "CPython"}
    problems: list[str] = []
    seen: set[str] = set()
    todo = [Requirement(root)]
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen.add(name)
        usable = [w for w in wheels
                  if w.name == name and req.specifier.contains(w.version, prereleases=True)
                  and w.tags & tags and w.requires_python.contains(f"{pyver}.0", prereleases=True)]
        if not usable:
            problems.append(f"python {pyver}: no wheel for {req}")
            continue
        best = max(usable, key=lambda w: w.version)
        todo.extend(best.requires)
    return problems


def main(argv: list[str]) -> int:
    if len(argv) < 4:
        sys.stderr.write(__doc__ or "")
        return 2
    house, arch, versions = Path(argv[1]), argv[2], argv[3:]
    wheels = [Wheel(p) for p in sorted(house.glob("*.whl"))]
    problems: list[str] = []
    for pyver in versions:
        problems += closure_problems(wheels, "vllm-nodeagent", pyver, arch)
    for line in problems:
        sys.stderr.write(f"check_wheelhouse: {line}\n")
    if not problems:
        sys.stdout.write(f"check_wheelhouse: {len(wheels)} wheels install on CPython {' '.join(versions)}\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
