"""docs/metrics.md is the contract dashboards and alert rules rely on: a family renamed, retyped or relabelled in
the writer without the docs (or documented and not emitted) fails here."""

from __future__ import annotations

import re
from pathlib import Path

from vllm_nodeagent.daemon.metrics import FAMILIES, PHASES, Metrics

DOCS = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"
ROW = re.compile(r"^\| `(?P<name>vllm_nodeagent_[a-z_]+)` \| (?P<type>\w+) \| (?P<unit>[^|]+) \| (?P<labels>[^|]+) \|")


def documented() -> dict[str, tuple[str, tuple[str, ...]]]:
    out: dict[str, tuple[str, tuple[str, ...]]] = {}
    for line in DOCS.read_text(encoding="utf-8").splitlines():
        m = ROW.match(line)
        if m:
            labels = tuple(re.findall(r"`([a-z_]+)`", m["labels"]))
            out[m["name"]] = (m["type"], labels)
    return out


def emitted(tmp_path: Path) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Every family the writer can emit, read back from the text it renders (TYPE lines and label names)."""
    m = Metrics(str(tmp_path / "x.prom"))
    m.heartbeat(1.0)
    m.checked(1.0)
    m.set_compliance("thp.enabled", False)
    m.set_mode("audit")
    m.add_drift("thp.enabled")
    m.set_prewarm(1, 1.0)
    m.set_expected(True)
    m.set_up(True)
    m.set_phase("serving")
    m.set_ready_seconds(1.0)
    m.add_restart()
    m.add_gate_failure()
    m.set_checks({"shm.size": 0})
    m.add_component_failure("settings")
    types: dict[str, str] = {}
    labels: dict[str, set[str]] = {}
    for line in m.render().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            types[name] = kind
            labels[name] = set()
        elif not line.startswith("#"):
            name = line.split("{")[0].split(" ")[0]
            assert name in types, f"sample {name} without a TYPE line"
            labels[name].update(re.findall(r'([a-z_]+)="', line))
    order = {f.name: f.labels for f in FAMILIES}
    return {n: (t, tuple(sorted(labels[n], key=order[n].index))) for n, t in types.items()}


def test_the_docs_table_is_what_the_writer_emits(tmp_path: Path) -> None:
    docs = documented()
    assert len(docs) >= 10, "the table in docs/metrics.md was not found"
    assert emitted(tmp_path) == docs


def test_the_family_table_matches_the_docs() -> None:
    assert {f.name: (f.type, f.labels) for f in FAMILIES} == documented()


def test_every_phase_is_documented() -> None:
    text = DOCS.read_text(encoding="utf-8")
    assert all(f"`{p}`" in text for p in PHASES)


def test_the_contract_test_sees_a_rename(tmp_path: Path) -> None:
    """The comparison above could pass by reading nothing: a renamed family must show up as a difference."""
    docs = documented()
    renamed = {("vllm_nodeagent_vllm_up_renamed" if k == "vllm_nodeagent_vllm_up" else k): v for k, v in docs.items()}
    assert renamed != emitted(tmp_path)
