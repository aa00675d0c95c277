"""Packaging: the systemd unit's sandbox against what the agent needs, the wheelhouse closure check,
the Ansible role's config template against the sample config, and (marked `packaging`) a real build
whose wheelhouse is installed offline into a venv of every local CPython 3.9+.

The full install/upgrade/remove/purge cycle of the .deb and the role's real run live in
.ci/packaging.sh (they need root and change the machine).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "vllm-nodeagent.service"
SERVE_UNIT = REPO / "systemd" / "vllm-nodeagent-serve.service"
PACKAGING = REPO / "packaging"
ROLE = PACKAGING / "ansible" / "roles" / "vllm_nodeagent"
SAMPLE_CONFIG = REPO / "etc" / "config.toml"


def unit_settings(path: Path = UNIT) -> dict[str, list[str]]:
    """Every Key=value of the unit (all sections), values of repeated keys in order."""
    settings: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def words(settings: dict[str, list[str]], key: str) -> set[str]:
    return {w for value in settings.get(key, []) for w in value.split()}


def sample_config() -> dict[str, Any]:
    doc: dict[str, Any] = tomllib.loads(SAMPLE_CONFIG.read_text())
    return doc


# -- the systemd unit ---------------------------------------------------------------------------
def test_unit_keeps_what_the_daemon_writes_writable() -> None:
    s = unit_settings()
    # /proc/sys and /sys stay writable, /dev/nvidia* reachable, JIT allowed.
    for forbidden in (
        "ProtectKernelTunables",
        "PrivateDevices",
        "DeviceAllow",
        "DevicePolicy",
        "ProtectClock",
        "MemoryDenyWriteExecute",
        "ProtectProc",
        "ProcSubset",
        "PrivateUsers",
        "User",
        "DynamicUser",
    ):
        assert forbidden not in s, f"{forbidden}= would break the agent (see docs/packaging.md)"
    assert s["ProtectSystem"] == ["strict"]
    assert s["Type"] == ["notify"]
    assert s["ExecStart"] == ["/usr/bin/vllm-nodeagent run"]
    assert s["KillMode"] == ["mixed"]
    assert s["Restart"] == ["on-failure"]
    assert "StartLimitBurst" in s and "WatchdogSec" in s
    # Under ProtectSystem=strict the state dir and the metrics textfile's dir must be writable.
    agent = sample_config()["agent"]
    assert agent["state_dir"] == "/var/lib/" + s["StateDirectory"][0]
    rw = {p.lstrip("-") for p in words(s, "ReadWritePaths")}
    if agent["metrics_textfile"] == "auto":  # either distro's node_exporter directory
        from vllm_nodeagent.daemon.metrics import DEBIAN_DIR, GENERIC_DIR

        assert {DEBIAN_DIR, GENERIC_DIR} <= rw
    else:
        assert os.path.dirname(agent["metrics_textfile"]) in rw
    hf_home = sample_config()["vllm"]["env"]["HF_HOME"]
    assert hf_home.startswith(agent["state_dir"] + "/"), "the HF cache must live somewhere writable"


def test_unit_capabilities_and_sockets_cover_the_daemon() -> None:
    s = unit_settings()
    caps = words(s, "CapabilityBoundingSet")
    # drop to user vllm, signal it, bind it to NUMA nodes, mlock for prewarm --lock, NVML + numa_balancing
    assert {"CAP_SETUID", "CAP_SETGID", "CAP_KILL", "CAP_SYS_NICE", "CAP_IPC_LOCK", "CAP_SYS_ADMIN"} <= caps
    assert not caps & {"CAP_SYS_MODULE", "CAP_SYS_PTRACE", "CAP_NET_ADMIN", "CAP_SYS_RAWIO", "CAP_SYS_TIME"}
    families = words(s, "RestrictAddressFamilies")
    assert families == {"AF_UNIX", "AF_NETLINK", "AF_INET", "AF_INET6"}
    assert "AF_PACKET" not in families
    # the syscall deny-list must not take what the launcher needs (setuid, mbind, sched_setaffinity, mlock)
    denied = words(s, "SystemCallFilter")
    assert all(d.startswith("~") or d.startswith("@") for d in denied)
    assert not {"@privileged", "@resources", "@setuid", "@memlock", "~@privileged", "~@resources"} & denied


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_security_exposure_at_most_5() -> None:
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", proc.stdout)
    assert match, proc.stdout + proc.stderr
    assert float(match.group(1)) <= 5.0
    gate = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=50", str(UNIT)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert gate.returncode == 0


def test_serve_unit_is_vllm_sandbox_with_gpus_and_no_privileges() -> None:
    s = unit_settings(SERVE_UNIT)
    assert s["User"] == ["vllm"] and s["Type"] == ["notify"] and s["Restart"] == ["on-failure"]
    assert s["ExecStart"] == ["/usr/bin/vllm-nodeagent serve"]
    assert s["CapabilityBoundingSet"] == [""] and s["NoNewPrivileges"] == ["yes"]
    assert s["ProtectSystem"] == ["strict"] and s["PrivateTmp"] == ["yes"]
    assert "WatchdogSec" in s and s["KillMode"] == ["mixed"]
    # GPUs: a device allow-list, never PrivateDevices=; JIT: no MemoryDenyWriteExecute=
    assert "PrivateDevices" not in s and "MemoryDenyWriteExecute" not in s
    assert s["DevicePolicy"] == ["closed"]
    assert {"char-nvidia", "char-nvidiactl", "char-nvidia-uvm"} <= words(s, "DeviceAllow")
    # only the HF cache and vllm's home are writable, and HF_HOME is one of them
    hf_home = sample_config()["vllm"]["env"]["HF_HOME"]
    assert hf_home.removeprefix("/var/lib/") in words(s, "StateDirectory")
    assert "ReadWritePaths" not in s
    # ordered after the host agent, but nothing that makes a host agent restart reach vLLM
    assert "vllm-nodeagent.service" in words(s, "After") and "vllm-nodeagent.service" in words(s, "Wants")
    assert not {"Requires", "BindsTo", "PartOf", "Requisite"} & set(s)
    # mbind/sched_setaffinity (numactl) and mlock (prewarm) stay allowed
    assert not {"~@resources", "~@memlock"} & words(s, "SystemCallFilter")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_serve_unit_security_exposure_at_most_3() -> None:
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(SERVE_UNIT)],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", proc.stdout)
    assert match, proc.stdout + proc.stderr
    assert float(match.group(1)) <= 3.0


# -- the declared runtime dependencies: each one imported by the agent and pinned in the wheelhouse's lock ----------
IMPORT_NAMES = {"nvidia-ml-py": "pynvml"}  # distribution -> the module the agent imports, where they differ
LOCK_ONLY = {"typing-extensions": "structlog's, on Python < 3.11"}  # pinned for the offline wheelhouse, not imported


def _dist(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0].lower()


def _agent_imports() -> set[str]:
    """Top-level modules the agent imports: import statements and ``importlib.import_module("literal")``."""
    import ast

    found: set[str] = set()
    for path in sorted((REPO / "vllm_nodeagent").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "import_module"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                found.add(node.args[0].value.split(".")[0])
    return found


def test_every_runtime_dependency_is_imported_by_the_agent_and_pinned() -> None:
    """Declared and never imported (psutil, prometheus-client, py-cpuinfo were) ships dead weight in every
    install's wheelhouse; imported and not declared breaks the offline install."""
    try:
        import tomllib
    except ImportError:  # Python < 3.11: tomli, a runtime dependency there
        import tomli as tomllib  # type: ignore[no-redef]
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = {_dist(r) for r in project["dependencies"]}
    wanted = {IMPORT_NAMES.get(d, d.replace("-", "_")) for d in declared}
    imported = _agent_imports()
    assert wanted - imported == set()  # each declared dependency is imported somewhere
    if hasattr(sys, "stdlib_module_names"):  # Python 3.10+
        third_party = {m for m in imported if m not in sys.stdlib_module_names and m != "vllm_nodeagent"}
        assert third_party == wanted  # and nothing else is
    lines = (PACKAGING / "requirements.lock").read_text(encoding="utf-8").splitlines()
    pinned = {_dist(line) for line in lines if line.strip() and not line.lstrip().startswith("#")}
    assert pinned == declared | set(LOCK_ONLY), pinned ^ (declared | set(LOCK_ONLY))
    assert "psutil" in {_dist(r) for r in project["optional-dependencies"]["test"]}  # tests cross-check /proc with it


# -- the wheelhouse closure check ---------------------------------------------------------------
def fake_wheel(house: Path, name: str, version: str, tag: str, requires: list[str], requires_python: str = "") -> None:
    dist = f"{name.replace('-', '_')}-{version}"
    meta = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    if requires_python:
        meta.append(f"Requires-Python: {requires_python}")
    meta += [f"Requires-Dist: {r}" for r in requires]
    with zipfile.ZipFile(house / f"{dist}-{tag}.whl", "w") as zf:
        zf.writestr(f"{dist}.dist-info/METADATA", "\n".join(meta) + "\n")


def check_wheelhouse(house: Path, *versions: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(PACKAGING / "check_wheelhouse.py"), str(house), "x86_64", *versions],
        capture_output=True,
        text=True,
        check=False,
    )


def test_check_wheelhouse_catches_a_marker_dependency_missing_for_old_pythons(tmp_path: Path) -> None:
    pytest.importorskip("packaging")
    fake_wheel(
        tmp_path,
        "vllm-nodeagent",
        "0.1.0",
        "py3-none-any",
        ["psutil>=5.9", 'tomli>=2.0; python_version < "3.11"', 'vllm; extra == "vllm"'],
        ">=3.9",
    )
    fake_wheel(tmp_path, "psutil", "7.2.2", "cp36-abi3-manylinux2014_x86_64", [])
    ok = check_wheelhouse(tmp_path, "3.11", "3.12")
    assert ok.returncode == 0, ok.stderr
    missing = check_wheelhouse(tmp_path, "3.9", "3.12")
    assert missing.returncode == 1
    assert "python 3.9: no wheel for tomli" in missing.stderr
    assert "3.12" not in missing.stderr
    fake_wheel(tmp_path, "tomli", "2.3.0", "cp311-cp311-manylinux2014_x86_64", [])  # wrong interpreter
    assert check_wheelhouse(tmp_path, "3.9").returncode == 1
    fake_wheel(tmp_path, "tomli", "2.3.0", "py3-none-any", [], ">=3.8")
    assert check_wheelhouse(tmp_path, "3.9", "3.10").returncode == 0


def test_check_wheelhouse_honours_requires_python_and_platform(tmp_path: Path) -> None:
    pytest.importorskip("packaging")
    fake_wheel(tmp_path, "vllm-nodeagent", "0.1.0", "py3-none-any", ["structlog>=23.1"], ">=3.9")
    fake_wheel(tmp_path, "structlog", "26.1.0", "py3-none-any", [], ">=3.10")
    result = check_wheelhouse(tmp_path, "3.9")
    assert result.returncode == 1 and "structlog" in result.stderr
    fake_wheel(tmp_path, "structlog", "25.5.0", "py3-none-any", [], ">=3.8")
    assert check_wheelhouse(tmp_path, "3.9", "3.13").returncode == 0
    fake_wheel(tmp_path, "psutil", "7.2.2", "cp36-abi3-macosx_11_0_arm64", [])
    (tmp_path / "vllm_nodeagent-0.1.0-py3-none-any.whl").unlink()
    fake_wheel(tmp_path, "vllm-nodeagent", "0.1.0", "py3-none-any", ["psutil"], ">=3.9")
    assert check_wheelhouse(tmp_path, "3.12").returncode == 1


# -- the fleet view: alert rules and dashboard ship in both packages ------------------------------
FLEET_SHARE = "/usr/share/vllm-nodeagent"


def test_packages_ship_the_alert_rules_and_the_dashboard() -> None:
    """Every rule file and dashboard of packaging/ is a 0644 file of both packages under /usr/share/vllm-nodeagent,
    and docs/fleet.md names where it lands (.ci/packaging.sh checks the built packages and the installed copy)."""
    yaml = pytest.importorskip("yaml")
    contents = yaml.safe_load((PACKAGING / "nfpm.yaml").read_text())["contents"]
    by_src = {c["src"]: c for c in contents if "src" in c}
    shipped = sorted(PACKAGING.glob("prometheus/*.rules.yml")) + sorted(PACKAGING.glob("grafana/*.json"))
    assert [p.name for p in shipped] == ["vllm-nodeagent.rules.yml", "vllm-nodeagent.json"]
    fleet_doc = (REPO / "docs" / "fleet.md").read_text()
    for path in shipped:
        rel = path.relative_to(PACKAGING).as_posix()
        entry = by_src.get(f"./{rel}")
        assert entry is not None, f"packaging/nfpm.yaml does not ship {rel}"
        assert entry["dst"] == f"{FLEET_SHARE}/{rel}"
        assert "packager" not in entry  # both the deb and the rpm
        assert entry["file_info"]["mode"] == 0o644
        assert entry["dst"] in fleet_doc, f"docs/fleet.md does not say where {rel} is installed"
    dirs = {c["dst"] for c in contents if c.get("type") == "dir"}
    assert {FLEET_SHARE, f"{FLEET_SHARE}/prometheus", f"{FLEET_SHARE}/grafana"} <= dirs


# -- the Ansible role's config template ---------------------------------------------------------
def render_role_config(overrides: dict[str, Any]) -> str:
    jinja2 = pytest.importorskip("jinja2")
    yaml = pytest.importorskip("yaml")
    variables: dict[str, Any] = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    variables.update(overrides)
    variables["ansible_managed"] = "Ansible managed"
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(ROLE / "templates")), keep_trailing_newline=True)
    env.filters["to_json"] = json.dumps
    env.filters["comment"] = lambda text: "\n".join(f"# {line}" for line in str(text).splitlines())
    env.tests["match"] = lambda value, pattern: re.match(pattern, str(value)) is not None
    text: str = env.get_template("config.toml.j2").render(**variables)
    return text


def test_role_defaults_render_the_sample_config() -> None:
    rendered = tomllib.loads(render_role_config({}))
    assert rendered == sample_config()


def test_role_renders_exact_sysctls_and_drops_empty_sections() -> None:
    text = render_role_config(
        {
            "vllm_nodeagent_sysctl": {
                "vm.swappiness": {"value": 10, "mode": "exact"},
                "kernel.numa_balancing": {"value": 0, "mode": "exact"},
            },
            "vllm_nodeagent_irq": {},
            "vllm_nodeagent_vllm": {"model": 'org/model "quoted"', "args": ["--max-model-len", "8192"]},
        }
    )
    doc = tomllib.loads(text)
    assert doc["sysctl"] == {
        "vm.swappiness": {"value": 10, "mode": "exact"},
        "kernel.numa_balancing": {"value": 0, "mode": "exact"},
    }
    from vllm_nodeagent.config import parse_config

    parse_config(text, "rendered")  # and the agent takes it (a bare 0 would be a floor that never binds)
    assert "irq" not in doc
    assert doc["vllm"]["model"] == 'org/model "quoted"'
    assert doc["vllm"]["args"] == ["--max-model-len", "8192"]
    assert doc["vllm"]["env"] == {"HF_HOME": "/var/lib/vllm-nodeagent/hf"}


# -- a real build: the wheelhouse installs offline on every local CPython -------------------------
def local_pythons() -> list[Path]:
    root = Path.home() / ".pyenv" / "versions"
    found = []
    for minor in range(9, 14):
        candidates = sorted(root.glob(f"3.{minor}.*/bin/python3")) if root.is_dir() else []
        if candidates:
            found.append(candidates[-1])
    return found


@pytest.mark.packaging
def test_built_wheelhouse_installs_offline_on_each_python(tmp_path: Path) -> None:
    if os.environ.get("VLLM_NODEAGENT_PACKAGING_BUILD") != "1":
        pytest.skip("set VLLM_NODEAGENT_PACKAGING_BUILD=1 to build the packages (needs PyPI access)")
    pythons = local_pythons()
    if not pythons:
        pytest.skip("no local CPython 3.9+ under ~/.pyenv/versions")
    subprocess.run([str(PACKAGING / "build.sh"), "deb"], check=True, capture_output=True)
    house = PACKAGING / "out" / "stage" / "wheels"
    for python in pythons:
        venv = tmp_path / python.parent.parent.name
        subprocess.run([str(python), "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [
                str(venv / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-index",
                "--find-links",
                str(house),
                "vllm-nodeagent",
            ],
            check=True,
        )
        out = subprocess.run(
            [str(venv / "bin" / "vllm-nodeagent"), "--version"], check=True, capture_output=True, text=True
        )
        assert out.stdout.startswith("vllm-nodeagent "), (python, out.stdout)
        # the venv belongs to the interpreter it was made with, not to the build machine's
        assert (venv / "bin" / "python").resolve() == python.resolve()
