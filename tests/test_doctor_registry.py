"""One doctor (issue 26.5): every check is registered in its room (checks/registry.py names and orders them);
each entry's results carry only the ids it declares, so ``doctor --only`` can select from the registry, and an id
no entry declares is an error naming the known ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import opener_for
from fakehost import FakeHost, SysfsHost
from nvml_double import NvmlDouble

from vllm_nodeagent import cli
from vllm_nodeagent.checks import registry
from vllm_nodeagent.checks.base import Probe
from vllm_nodeagent.config import load_config
from vllm_nodeagent.context import Context
from vllm_nodeagent.nvml import Nvml
from vllm_nodeagent.settings.checks import CHECKS as SETTINGS
from vllm_nodeagent.settings.families import build_tunables
from vllm_nodeagent.topology import discover

SAMPLE = (Path(__file__).resolve().parent.parent / "etc/config.toml").read_text()
# the sample with more on: IRQ affinity, GPU compute mode and power limit, a model whose files are there
FULL = (
    SAMPLE.replace("affinity = false", "affinity = true")
    .replace('model = ""', 'model = "/models/m"', 1)
    .replace('# compute_mode = "default"', 'compute_mode = "default"', 1)
    .replace('# power_limit = "max"', 'power_limit = "max"', 1)
)


def config_file(root: Path, text: str) -> Path:
    cfg = root / "doctor.toml"
    cfg.write_text(text)
    cfg.chmod(0o600)
    return cfg


def doctor(root: Path, nvml: NvmlDouble, cfg: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple:
    argv = ["--root", str(root), "--config", str(cfg), "doctor", *extra]
    rc = cli.main(argv, nvml_opener=opener_for(nvml), host_cls=SysfsHost)
    out = capsys.readouterr()
    return rc, out.out, out.err


def full_tree(hgx: FakeHost) -> Path:
    hgx.write_raw("/models/m/model.safetensors", b"\0" * 4096)
    return config_file(hgx.root, FULL)


def test_each_entry_reports_only_the_ids_it_registers(hgx: FakeHost, hgx_nvml: NvmlDouble) -> None:
    cfg = full_tree(hgx)
    host = SysfsHost(hgx.root)
    config = load_config(str(cfg), host.path("/etc/vllm-nodeagent/config.toml"))
    nvml = Nvml.open(lambda: hgx_nvml)
    ctx = Context(host, config, str(cfg), "console", nvml_opener=lambda: nvml)
    probe = Probe(host, config, discover(host, nvml), nvml, ctx=ctx)
    seen: dict[str, list[str]] = {}
    for name, where in registry.REGISTRY:
        reg = registry.entry(where)
        ids = [r.id for r in registry.run(probe, names=[name])]
        seen[name] = ids
        assert [i for i in ids if not reg.selected_by(i)] == [], (name, reg.ids)
    assert all(seen.values()), seen  # every room spoke on this tree
    assert {"sysctl.vm.max_map_count", "irq.gpu0.affinity", "gpu.0.compute_mode"} <= set(seen["settings"])


def test_every_setting_a_family_builds_has_a_registered_id(hgx: FakeHost, hgx_nvml: NvmlDouble) -> None:
    """A new family whose ids the settings room does not declare would be invisible to doctor --only."""
    cfg = full_tree(hgx)
    host = SysfsHost(hgx.root)
    config = load_config(str(cfg), host.path("/etc/vllm-nodeagent/config.toml"))
    nvml = Nvml.open(lambda: hgx_nvml)
    tunables = build_tunables(config, discover(host, nvml), host, nvml)
    assert len({t.family for t in tunables}) >= 8
    assert [t.id for t in tunables if not SETTINGS.selected_by(t.id)] == []


def test_only_selects_from_the_registry_in_the_reports_order(
    hgx: FakeHost, hgx_nvml: NvmlDouble, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = full_tree(hgx)
    _, out, _ = doctor(hgx.root, hgx_nvml, cfg, capsys, "--json")
    everything = [c for c in json.loads(out)["checks"]]
    ids = [c["id"] for c in everything]
    assert ids[:5] == ["config", "nvml", "topology.numa", "topology.gpu_numa", "agent.layout"]
    assert ids.index("vllm.numactl") > ids.index("sysctl.vm.max_map_count")
    assert ids.index("shm.size") > ids.index("vllm.numactl") and ids[-1] == "agent.metrics_textfile"
    for only in (["sysctl"], ["gpu"], ["vllm", "storage"], ["gpu.xid", "thp.enabled"], ["owners"], ["irq"]):
        _, out, _ = doctor(hgx.root, hgx_nvml, cfg, capsys, "--json", "--only", *only)
        want = [c for c in everything if any(c["id"] == o or c["id"].startswith(o + ".") for o in only)]
        assert json.loads(out)["checks"] == want, only


def test_an_unknown_only_id_is_an_error_naming_the_known_ids(
    hgx: FakeHost, hgx_nvml: NvmlDouble, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = config_file(hgx.root, SAMPLE)
    rc, out, err = doctor(hgx.root, hgx_nvml, cfg, capsys, "--only", "sysctl", "gpu.nosuch_check", "nvlm")
    assert rc == 2 and out == ""
    assert "--only gpu.nosuch_check nvlm: no such check" not in err  # gpu.* settings make gpu.<anything> known
    assert "--only nvlm: no such check; known: config, nvml, topology.numa" in err
    assert all(i in err for i in ("sysctl.*", "vllm.args.*", "shm.size", "p2p.iommu", "agent.metrics_textfile"))
    assert err.count("\n") == 1
    # a known family with nothing configured under that name: it is known, it just matches nothing here
    rc, _, err = doctor(hgx.root, hgx_nvml, cfg, capsys, "--only", "sysctl.vm.no_such_knob")
    assert rc == 2 and "matches no check" in err
