"""The shipped alert rules and dashboard (issue 25.2/25.3): `promtool check rules` and `promtool test rules` (each
alert firing for the broken node and not for the healthy one), every rule with for:, severity, a summary naming the
node (and the setting or check where there is one) and a runbook link to a heading of docs/fleet.md; every
dashboard query names only documented families. Real Prometheus end to end: tests/test_fleet_e2e.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from vllm_nodeagent.daemon.metrics import FAMILIES

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "packaging/prometheus/vllm-nodeagent.rules.yml"
RULE_TESTS = REPO / "packaging/prometheus/vllm-nodeagent.rules.test.yml"
DASHBOARD = REPO / "packaging/grafana/vllm-nodeagent.json"
FLEET_DOC = REPO / "docs/fleet.md"
needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (Debian: apt-get install prometheus)"
)


def rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    out = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            text = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^a-z0-9 _-]", "", text).replace(" ", "-"))
    return out


@needs_promtool
def test_promtool_check_rules() -> None:
    r = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(rules())} rules found" in r.stdout


@needs_promtool
def test_promtool_test_rules() -> None:
    r = subprocess.run(
        ["promtool", "test", "rules", RULE_TESTS.name],
        capture_output=True,
        text=True,
        check=False,
        cwd=RULE_TESTS.parent,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_alert_has_a_unit_test_that_fires_and_one_that_does_not() -> None:
    cases = [c for t in yaml.safe_load(RULE_TESTS.read_text())["tests"] for c in t["alert_rule_test"]]
    for rule in rules():
        mine = [c for c in cases if c["alertname"] == rule["alert"]]
        assert any(c.get("exp_alerts") for c in mine), f"{rule['alert']}: no firing case"
        assert any(not c.get("exp_alerts") for c in mine), f"{rule['alert']}: no not-firing case"


def test_every_alert_has_for_severity_summary_and_a_runbook_heading() -> None:
    heads = anchors(FLEET_DOC.read_text())
    for rule in rules():
        name = rule["alert"]
        assert "for" in rule, name
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), name
        summary = rule["annotations"]["summary"]
        assert "$labels.instance" in summary, f"{name}: the summary must name the node"
        if any(f in rule["expr"] for f in ("setting_compliant", "drift_events_total", "check_status")):
            assert "$labels.id" in summary, f"{name}: the summary must name the setting or check"
        anchor = rule["annotations"]["runbook_url"].split("docs/fleet.md#", 1)[1]
        assert anchor == name.lower() and anchor in heads, f"{name}: no heading for #{anchor} in docs/fleet.md"


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bvllm_nodeagent_[a-z_]+", expr))


def test_rules_and_dashboard_use_only_documented_families() -> None:
    known = {f.name for f in FAMILIES}
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [r["expr"] for r in rules()]
    used = set().union(*(metric_names(e) for e in exprs))
    assert used - known == set()


def test_dashboard_covers_the_fleet_view() -> None:
    board = json.loads(DASHBOARD.read_text())
    panels = [p for p in board["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    used = set().union(*(metric_names(t["expr"]) for p in panels for t in p["targets"]))
    for family in (
        "vllm_nodeagent_setting_compliant",  # fleet drift
        "vllm_nodeagent_drift_events_total",
        "vllm_nodeagent_vllm_up",  # nodes not ready
        "vllm_nodeagent_vllm_ready_seconds",  # time to READY
        "vllm_nodeagent_vllm_restarts_total",
        "vllm_nodeagent_check_status",  # doctor status by check
        "vllm_nodeagent_heartbeat_timestamp_seconds",
    ):
        assert family in used, family
    assert all('instance=~"$instance"' in t["expr"] for p in panels for t in p["targets"])  # per-node detail
    assert {v["name"] for v in board["templating"]["list"]} == {"datasource", "instance"}
