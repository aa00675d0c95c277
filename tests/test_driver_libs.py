"""vLLM's clean environment and the NVIDIA driver's libraries (issue 17): found the way ld.so finds them."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import opener_for
from nvml_double import NvmlDouble

from vllm_nodeagent import cli
from vllm_nodeagent.host import Host
from vllm_nodeagent.serving import driver_libs

# The lent H100's layout: the driver mounted at /usr/local/nvidia/lib64, named only by the shell's LD_LIBRARY_PATH.
NV = "/usr/local/nvidia/lib64"


def _tree(root: Path, libdir: str, conf: dict[str, str]) -> Host:
    d = root / libdir.lstrip("/")
    d.mkdir(parents=True)
    for lib in driver_libs.DRIVER_LIBS:
        (d / lib).write_text("")
    for path, text in conf.items():
        p = root / path.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return Host(root)


def test_driver_outside_the_loader_path_fails_and_names_the_fix(tmp_path: Path) -> None:
    host = _tree(
        tmp_path,
        NV,
        {"/etc/ld.so.conf": "include /etc/ld.so.conf.d/*.conf\n", "/etc/ld.so.conf.d/libc.conf": "/usr/local/lib\n"},
    )
    v = driver_libs.check(host, {}, {"LD_LIBRARY_PATH": f"/usr/local/cuda/lib64:{NV}"})
    assert v.status == "fail"
    assert "libcuda.so.1: not found" in v.current
    assert f'LD_LIBRARY_PATH = "{NV}"' in v.hint and "ldconfig" in v.hint


def test_vllm_env_ld_library_path_passes(tmp_path: Path) -> None:
    host = _tree(tmp_path, NV, {})
    v = driver_libs.check(host, {"LD_LIBRARY_PATH": NV}, {})
    assert v.status == "pass"
    assert v.current == f"libcuda.so.1: {NV} (LD_LIBRARY_PATH), libnvidia-ml.so.1: {NV} (LD_LIBRARY_PATH)"


def test_registered_with_ld_so_conf_include_passes(tmp_path: Path) -> None:
    host = _tree(
        tmp_path,
        NV,
        {
            "/etc/ld.so.conf": "# comment\ninclude ld.so.conf.d/*.conf\n",
            "/etc/ld.so.conf.d/nvidia.conf": f"{NV}  # driver\n",
            "/etc/ld.so.conf.d/other.txt": "/nowhere\n",
        },
    )
    assert driver_libs.ld_so_conf_dirs(host) == [NV]
    v = driver_libs.check(host, {}, {})
    assert v.status == "pass" and "(ld.so.conf)" in v.current


def test_distro_driver_in_the_default_directory_passes(tmp_path: Path) -> None:
    host = _tree(tmp_path, "/usr/lib/x86_64-linux-gnu", {})
    assert driver_libs.check(host, {}, {}).status == "pass"


def test_no_driver_anywhere_warns(tmp_path: Path) -> None:
    v = driver_libs.check(Host(tmp_path), {}, {"LD_LIBRARY_PATH": NV})
    assert v.status == "warn" and "is the NVIDIA driver installed" in v.hint


def test_include_loop_terminates(tmp_path: Path) -> None:
    host = _tree(tmp_path, NV, {"/etc/ld.so.conf": "include /etc/ld.so.conf\n/opt/x\n"})
    assert driver_libs.ld_so_conf_dirs(host) == ["/opt/x"]


def test_doctor_reports_it_on_the_replayed_h100(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The recorded H100 tree has no driver files: doctor shows the check (warn) once [vllm] launches something."""
    import json

    h100 = Path(__file__).parent / "gpu" / "h100-2026-11-25"
    cfg = tmp_path / "c.toml"
    cfg.write_text('[vllm]\nmodel = "/m"\nuser = "root"\n[vllm.env]\nLD_LIBRARY_PATH = "/usr/local/nvidia/lib64"\n')
    cfg.chmod(0o600)
    monkeypatch.setenv("LD_LIBRARY_PATH", NV)
    double = NvmlDouble.from_file(h100 / "nvml.json")
    cli.main(["--root", str(h100 / "root"), "--config", str(cfg), "doctor", "--json"], nvml_opener=opener_for(double))
    checks = {c["id"]: c for c in json.loads(capsys.readouterr().out)["checks"]}
    assert checks["vllm.driver_libs"]["status"] == "warn"
    assert "libcuda.so.1: not found" in checks["vllm.driver_libs"]["current"]
