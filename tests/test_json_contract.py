"""One versioned JSON contract (issue 26.4, docs/json.md): schema_version and kind first, cpulists as strings with
counts, null (never "" or -1) for unknown, each output valid against its checked-in schema (docs/schemas/), and
``apply --dry-run``: ``current`` is the live value, the would-be value is ``would_write``, exit 5 = changes pending."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import HOSTS
from fakehost import FakeHost, SysfsHost
from jsoncontract import SCHEMAS, check, errors

from vllm_nodeagent import cli

REPO = Path(__file__).resolve().parent.parent
SAMPLE = (REPO / "etc/config.toml").read_text()


def agent(root: Path, *args: str, config: str = SAMPLE) -> tuple[int, Any]:
    cfg = root.parent / "c.toml"
    cfg.write_text(config)
    cfg.chmod(0o600)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli.main(["--root", str(root), "--config", str(cfg), *args], host_cls=SysfsHost)
    return rc, json.loads(out.getvalue())


def no_empty_or_minus_one(value: Any, where: str = "$") -> list[str]:
    if isinstance(value, dict):
        return [p for k, v in value.items() if k != "env" for p in no_empty_or_minus_one(v, f"{where}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in no_empty_or_minus_one(v, f"{where}[{i}]")]
    return [where] if value in ("", -1) else []


def test_topology(hgx: FakeHost) -> None:
    rc, doc = agent(hgx.root, "topology", "--json")
    assert rc == 0 and list(doc)[:2] == ["schema_version", "kind"] and doc["kind"] == "topology"
    check(doc, "topology")
    assert doc["numa_nodes"][1]["cpus"] == "56-111" and doc["numa_nodes"][1]["cpus_count"] == 56
    assert doc["gpus"][0]["local_cpus"] == "0-55" and doc["gpus"][0]["uuid"] is None  # sysfs: no uuid
    assert doc["cpus_usable"] == "0-111"
    # cpus of empty sets stay "" (the kernel's empty cpulist), so look only at the other fields
    assert [p for p in no_empty_or_minus_one(doc) if not p.endswith("cpus")] == []


@pytest.mark.parametrize("name", sorted(HOSTS))
def test_topology_of_every_tree(name: str, tmp_path: Path) -> None:
    h = HOSTS[name](tmp_path / "root")
    assert agent(h.root, "topology", "--json")[0] == 0
    doc = agent(h.root, "topology", "--json")[1]
    check(doc, "topology")
    assert [p for p in no_empty_or_minus_one(doc) if not p.endswith("cpus")] == []
    if name == "no_pci_locality":
        assert any(g["numa_node"] is None and g["no_locality"] for g in doc["gpus"])


def test_doctor(hgx: FakeHost) -> None:
    rc, doc = agent(hgx.root, "doctor", "--json")
    assert rc == 1 and doc["schema_version"] == 1 and doc["kind"] == "doctor"
    check(doc, "doctor")
    assert no_empty_or_minus_one(doc) == []
    passing = next(c for c in doc["checks"] if c["status"] == "pass" and c["id"].startswith("thp."))
    assert passing["fix"] is None and passing["hint"] is None


def test_apply_dry_run_current_is_live_and_exit_5(hgx: FakeHost) -> None:
    rc, doc = agent(hgx.root, "apply", "--dry-run", "--json")
    assert rc == 5 and doc["kind"] == "apply" and doc["dry_run"] is True
    check(doc, "apply")
    r = {x["id"]: x for x in doc["results"]}["sysctl.net.ipv4.tcp_rmem"]
    live = (hgx.root / "proc/sys/net/ipv4/tcp_rmem").read_text().split()
    assert r["status"] == "would-change" and r["current"].split() == live  # today: the would-be value
    assert r["would_write"] == "4096 131072 134217728" and r["previous"] is None
    assert doc["summary"]["would-change"] >= 5

    rc, doc = agent(hgx.root, "apply", "--json")
    assert rc == 0 and doc["dry_run"] is False
    check(doc, "apply")
    r = {x["id"]: x for x in doc["results"]}["sysctl.net.ipv4.tcp_rmem"]
    assert r["status"] == "changed" and r["would_write"] is None and r["previous"].split() == live
    assert agent(hgx.root, "apply", "--dry-run", "--json")[0] == 0  # nothing to do

    rc, doc = agent(hgx.root, "revert", "--dry-run", "--json")
    assert doc["kind"] == "revert"
    check(doc, "revert")
    r = {x["id"]: x for x in doc["results"]}["sysctl.net.ipv4.tcp_rmem"]
    assert r["current"] == "4096 131072 134217728" and r["would_write"].split() == live
    rc, doc = agent(hgx.root, "revert", "--json")
    assert rc == 0
    check(doc, "revert")


def test_prewarm(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "proc").mkdir(parents=True)
    (root / "proc/meminfo").write_text("MemTotal: 8000000 kB\nMemAvailable: 4000000 kB\n")
    f = tmp_path / "m" / "w.safetensors"
    f.parent.mkdir()
    f.write_bytes(b"x" * 100000)
    rc, doc = agent(root, "prewarm", "--json", str(f.parent), config="")
    assert rc == 0 and doc["kind"] == "prewarm"
    check(doc, "prewarm")


@pytest.mark.parametrize("kind", ["topology", "doctor", "apply", "revert", "prewarm", "launch"])
def test_every_schema_is_checked_in_and_strict_enough(kind: str) -> None:
    sch = json.loads((SCHEMAS / f"{kind}.schema.json").read_text())
    assert sch["properties"]["schema_version"] == {"const": 1} and sch["properties"]["kind"] == {"const": kind}
    assert errors({"schema_version": 2, "kind": kind}, sch, sch)  # a wrong version or missing keys fail
    assert kind in (REPO / "docs/json.md").read_text()
