"""The families table: a new family is one module plus one line, and journals of the previous release revert.

``demo_family`` (tests/demo_family.py) is a family no code of the agent knows: registered in ``FAMILIES`` by a
test, apply, the journal, doctor and revert handle it with no other edit.
"""

from __future__ import annotations

import json
from pathlib import Path

import demo_family
import pytest
from conftest import opener_for
from fakehost import FakeHost, SysfsHost
from nvml_double import NvmlDouble

from vllm_nodeagent import cli
from vllm_nodeagent.config import parse_config
from vllm_nodeagent.nvml import Nvml
from vllm_nodeagent.settings import engine, families, restore
from vllm_nodeagent.settings.base import BuildInputs
from vllm_nodeagent.settings.journal import FORMAT_VERSION, JOURNAL_NAME, Journal
from vllm_nodeagent.topology import discover

STATE = "/var/lib/vllm-nodeagent"
HERE = Path(__file__).parent
# The config tests/journals/v2-hgx.json was written with (etc/config.toml, irq affinity on, mq-deadline).
V2_CONFIG = (
    (HERE.parent / "etc/config.toml")
    .read_text()
    .replace('irqbalance = "keep"', 'irqbalance = "ignore"')
    .replace("affinity = false", "affinity = true")
    .replace('scheduler = "none"', 'scheduler = "mq-deadline"')
)


def files(root: Path) -> dict[str, bytes]:
    """Every kernel file of a fake root (the state dir left out), as the kernel reads it back (no final newline)."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes().rstrip(b"\n")
        for p in root.rglob("*")
        if p.is_file() and not p.is_symlink() and not p.relative_to(root).as_posix().startswith("var/")
    }


def run(root: Path, capsys: pytest.CaptureFixture[str], *args: str, nvml: NvmlDouble | None = None) -> tuple[int, str]:
    cfg = root / "cfg.toml"
    cfg.write_text("")
    cfg.chmod(0o600)
    rc = cli.main(
        ["--root", str(root), "--config", str(cfg), *args],
        nvml_opener=opener_for(nvml) if nvml else None,
        host_cls=SysfsHost,
    )
    return rc, capsys.readouterr().out


def test_a_new_family_is_one_module_and_one_line(
    hgx: FakeHost, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    hgx.write(demo_family.PATH, "off")
    # Without the line, nothing knows the family: a journal entry naming it is not restorable.
    assert all(f.name != "demo" for f in families.FAMILIES)
    with pytest.raises(ValueError, match="unknown family 'demo'"):
        families.rebuild("demo", "demo.knob", {"knob": "knob"}, SysfsHost(hgx.root), None)

    monkeypatch.setattr(families, "FAMILIES", (*families.FAMILIES, demo_family.FAMILY))  # the one line

    rc, out = run(hgx.root, capsys, "doctor", "--json")
    [check] = [c for c in json.loads(out)["checks"] if c["id"] == "demo.knob"]
    assert (check["status"], check["current"], check["desired"]) == ("fail", "off", "on")

    rc, out = run(hgx.root, capsys, "apply", "--json")
    assert rc == 0 and json.loads(out)["results"] == [
        {
            "id": "demo.knob",
            "status": "changed",
            "current": "on",
            "desired": "on",
            "would_write": None,
            "previous": "off",
            "detail": None,
        }
    ]
    assert (hgx.root / demo_family.PATH.lstrip("/")).read_text() == "on"
    [line] = (hgx.root / STATE.lstrip("/") / JOURNAL_NAME).read_text().splitlines()[1:]
    assert {k: v for k, v in json.loads(line).items() if k not in ("recorded_at", "written_at")} == {
        "id": "demo.knob",
        "family": "demo",
        "params": {"knob": "knob"},
        "original": "off",
        "written": "on",
    }

    rc, out = run(hgx.root, capsys, "doctor", "--json")
    assert [c["status"] for c in json.loads(out)["checks"] if c["id"] == "demo.knob"] == ["pass"]

    rc, out = run(hgx.root, capsys, "revert")
    assert rc == 0 and out.startswith("restored     demo.knob  on → off")
    assert (hgx.root / demo_family.PATH.lstrip("/")).read_text() == "off"


def test_family_names_are_unique_and_every_setting_carries_its_family(hgx: FakeHost, hgx_nvml: NvmlDouble) -> None:
    names = [f.name for f in families.FAMILIES]
    assert len(names) == len(set(names))
    host = SysfsHost(hgx.root)
    nvml = Nvml.open(lambda: hgx_nvml)
    every = V2_CONFIG.replace('"ignore"', '"stop"').replace(
        "persistence_mode = true",
        'persistence_mode = true\npower_limit = "max"\nclocks = "max"\ncompute_mode = "default"',
    )
    every = every.replace('model = ""', 'model = "acme/tiny"')  # a vLLM whose bytecode the vllm family keeps
    inputs = BuildInputs(parse_config(every, "c"), discover(host, nvml), host, nvml)
    for family in families.FAMILIES:
        built = family.build(inputs)
        assert built, family.name  # the config above asks for every family
        for t in built:
            assert t.family == family.name
            # what apply journals is enough to make the same setting again, without the config
            again = families.rebuild(t.family, t.id, t.params(), host, nvml)
            assert (type(again), again.params()) == (type(t), t.params())


@pytest.mark.parametrize(
    ("family", "id", "params", "why"),
    [
        ("irq", "irq.gpu0.affinity", {"device": "gpu0", "irqs": "1 ../2"}, "bad irqs"),
        ("irq", "irq.gpu1.affinity", {"device": "gpu0", "irqs": "100"}, "does not match"),
        ("irq", "irq.gpu0.affinity", {"device": "gpu0", "irqs": "100", "path": "/etc/shadow"}, "unexpected parameter"),
        ("cpu", "cpu.governor", {"policy0": "/etc/shadow"}, "outside cpufreq"),
        ("file", "x", {"path": "/etc/shadow"}, "unknown family"),
    ],
)
def test_rebuild_refuses_params_its_family_never_writes(
    hgx: FakeHost, family: str, id: str, params: dict[str, str], why: str
) -> None:
    with pytest.raises(ValueError, match=why):
        families.rebuild(family, id, params, SysfsHost(hgx.root), None)


def test_a_version_2_journal_of_the_previous_release_reverts_everything(hgx: FakeHost, hgx_nvml: NvmlDouble) -> None:
    """tests/journals/v2-hgx.json was written by the previous release (main at 1e0acf5, journal format 2) applying
    V2_CONFIG to this fake host, plus an irqbalance entry recorded through its Journal.record. After an upgrade
    that journal must still revert: same entries as this release journals for the same apply, every setting back."""
    host, nvml = SysfsHost(hgx.root), Nvml.open(lambda: hgx_nvml)
    before = files(hgx.root)
    journal = Journal(host, STATE)
    tunables = families.build_tunables(parse_config(V2_CONFIG, "c"), discover(host, nvml), host, nvml)
    assert {o.status for o in engine.apply(tunables, journal, log_results=False)} == {engine.CHANGED, engine.OK}
    assert files(hgx.root) != before and set(hgx_nvml.persistence.values()) == {1}
    ours = {i: (e.family, e.params, e.original, e.written) for i, e in journal.entries().items()}

    path = hgx.root / STATE.lstrip("/") / JOURNAL_NAME
    path.write_text((HERE / "journals/v2-hgx.json").read_text())
    old = journal.entries()
    assert journal.problems == []
    assert {i: (e.family, e.params, e.original, e.written) for i, e in old.items() if i != "irqbalance"} == ours
    assert old["irq.gpu5.affinity"].params == {"device": "gpu5", "irqs": "122 123"}

    outcomes = {o.id: o for o in restore.revert(host, journal, nvml, log_results=False)}
    kept_out = outcomes.pop("irqbalance")  # a fake root has no systemd: not restorable here, kept, not a failure
    assert kept_out.status == restore.UNRESTORABLE
    assert kept_out.message.startswith("no service manager under --root; kept in the journal")
    assert {o.status for o in outcomes.values()} == {engine.RESTORED, engine.UNTOUCHED}
    assert len(outcomes) == len(ours) == 28
    assert files(hgx.root) == before and set(hgx_nvml.persistence.values()) == {0}
    # What could not be settled stays, now in this release's format.
    header, kept = path.read_text().splitlines()
    assert json.loads(header) == {"version": FORMAT_VERSION}
    assert {k: v for k, v in json.loads(kept).items() if k != "recorded_at"} == {
        "id": "irqbalance",
        "family": "irqbalance",
        "params": {},
        "original": "active/enabled",
        "written": "inactive/disabled",
        "written_at": None,  # a version-2 entry did not keep when it was written
    }
