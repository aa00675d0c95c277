"""The fleet view end to end with real parts, on this machine (issue 25.4): two fake nodes, each a real
`vllm-nodeagent run` daemon (--root tree, /etc/os-release says Debian, metrics_textfile = "auto") and a real
prometheus-node-exporter reading its textfile directory; a real Prometheus scraping both every second with the
shipped rule file loaded; a real Alertmanager sending to a webhook receiver in this test. Only 127.0.0.1.

Node "audit" runs in audit mode with a sysctl floor; node "serve" serves the stand-in vLLM (readiness gate, time to
READY) after a prewarm of a small file. Break the sysctl on "audit" → VllmNodeagentSettingDrifted fires for that
node and that setting (and nothing for "serve"); `vllm-nodeagent apply` → it resolves; stop the "audit" agent →
VllmNodeagentHeartbeatStale fires. Every dashboard query evaluated through Prometheus's HTTP API returns series.

The rules run with shorter ``for:`` (and heartbeat threshold) than shipped, so the test takes seconds, not
minutes: the expressions are the shipped ones. The times measured are printed (and written to
$VNA_FLEET_REPORT when set); no test asserts a duration (charter).

Run: ``VNA_FLEET_E2E=1 pytest -m prometheus tests/test_fleet_e2e.py`` (.ci/run's fleet leg); needs Debian's
prometheus, prometheus-node-exporter and prometheus-alertmanager.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest
from fleet_webhook import Webhook
from test_daemon import REPO, STANDIN, Bed, free_port, toml_value

RULES = REPO / "packaging/prometheus/vllm-nodeagent.rules.yml"
DASHBOARD = REPO / "packaging/grafana/vllm-nodeagent.json"
BINARIES = ("prometheus", "prometheus-node-exporter", "prometheus-alertmanager", "numactl")
SCRAPE_S = 1
WAIT_S = 90.0  # upper bound for "eventually"; never a speed assertion
FOR_IN_TEST = {"VllmNodeagentSettingDrifted": "3s", "VllmNodeagentHeartbeatStale": "2s"}
HEARTBEAT_STALE_S = 5  # shipped: 300

pytestmark = [
    pytest.mark.prometheus,
    pytest.mark.skipif(
        os.environ.get("VNA_FLEET_E2E") != "1", reason="set VNA_FLEET_E2E=1 (.ci/run's fleet leg runs it)"
    ),
    pytest.mark.skipif(
        not all(shutil.which(b) for b in BINARIES),
        reason="needs Debian's prometheus, prometheus-node-exporter, prometheus-alertmanager and numactl",
    ),
]


def wait_for(cond: Any, what: str, timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def rules_for_test(tmp: Path) -> Path:
    """The shipped rules with the test's for: and heartbeat threshold; every other character as shipped."""
    text = RULES.read_text()
    for alert, duration in FOR_IN_TEST.items():
        text, n = re.subn(rf"(- alert: {alert}\n(?:\s+#.*\n)*\s+expr: .*\n\s+for: )\S+", rf"\g<1>{duration}", text)
        assert n == 1, alert
    stale = "time() - vllm_nodeagent_heartbeat_timestamp_seconds > "
    assert text.count(stale + "300") == 1
    text = text.replace(stale + "300", f"{stale}{HEARTBEAT_STALE_S}")
    out = tmp / "rules.yml"
    out.write_text(text)
    return out


class Node:
    """One fake node: the agent daemon under its --root and a node_exporter reading its textfile dir."""

    def __init__(self, name: str, base: Path, vllm: bool) -> None:
        self.name = name
        self.bed = Bed(tempfile.mkdtemp(prefix=f"vna-{name}-", dir=base))
        root = self.bed.root
        (root / "etc").mkdir(parents=True, exist_ok=True)
        (root / "etc/os-release").write_text('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\n')
        if not vllm:
            # audit mode never writes, even at start: the node must start tuned, else the drift alert is pending
            # before the test breaks anything (it fired "1.1 s after the break" with for: 3s) and the drift-event
            # counter is read before the one change it should count
            (root / "proc/sys/vm/max_map_count").write_text("262144\n")
        self.textdir = root / "var/lib/prometheus/node-exporter"  # "auto" on Debian
        self.port = free_port()
        self.instance = f"127.0.0.1:{self.port}"
        lines = [
            "[agent]",
            f'state_dir = "{self.bed.state}"',
            "drift_interval_s = 1",
            'metrics_textfile = "auto"',
            f'mode = "{"enforce" if vllm else "audit"}"',
            "[sysctl]",
            '"vm.max_map_count" = 262144',
        ]
        if vllm:
            warm = self.bed.base / "weights.bin"
            warm.write_bytes(os.urandom(1 << 20))
            lines += ["[prewarm]", f"paths = [{json.dumps(str(warm))}]", "include_model = false"]
            v = {
                "command": [sys.executable, str(STANDIN)],
                "model": "standin-model",
                "args": ["--port", str(self.bed.port), "--record", str(self.bed.record), "--load-seconds", "1"],
                "user": "root",
                "health_url": f"http://127.0.0.1:{self.bed.port}/health",
                "nodes": [0],
                "start_timeout_s": 60,
                "stop_timeout_s": 5,
            }
            lines.append("[vllm]")
            lines += [f"{k} = {toml_value(val)}" for k, val in v.items()]
        self.bed.config.write_text("\n".join(lines) + "\n")
        self.bed.config.chmod(0o600)
        self.exporter: Optional[subprocess.Popen[bytes]] = None

    def start(self) -> None:
        self.bed.start()
        self.textdir.mkdir(parents=True, exist_ok=True)  # node_exporter starts before the agent's first write
        self.exporter = subprocess.Popen(
            [
                "prometheus-node-exporter",
                "--collector.disable-defaults",
                "--collector.textfile",
                f"--collector.textfile.directory={self.textdir}",
                f"--web.listen-address={self.instance}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def textfile(self) -> str:
        f = self.textdir / "vllm_nodeagent.prom"
        return f.read_text() if f.exists() else ""

    def agent(self, *argv: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "vllm_nodeagent.cli", "--root", str(self.bed.root)]
        cmd += ["--config", str(self.bed.config), *argv]
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET",)}
        env["PYTHONPATH"] = str(REPO)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=str(REPO), check=False)

    def stop(self) -> None:
        self.bed.stop()
        for r in self.bed.records("server"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(r["pid"], signal.SIGKILL)
        stop(self.exporter)


def stop(proc: Optional[subprocess.Popen[bytes]]) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Stack:
    """Prometheus (1 s scrape and evaluation, the rules) and Alertmanager (webhook receiver), on loopback."""

    def __init__(self, tmp: Path, nodes: list[Node], webhook: Webhook) -> None:
        self.prom_port, self.am_port = free_port(), free_port()
        am_cfg = tmp / "alertmanager.yml"
        am_cfg.write_text(
            json.dumps(
                {
                    "route": {
                        "receiver": "test",
                        "group_by": ["alertname", "instance", "id"],
                        "group_wait": "0s",
                        "group_interval": "1s",
                        "repeat_interval": "1h",
                    },
                    "receivers": [
                        {
                            "name": "test",
                            "webhook_configs": [{"url": f"http://127.0.0.1:{webhook.port}/", "send_resolved": True}],
                        }
                    ],
                }
            )
        )
        prom_cfg = tmp / "prometheus.yml"
        prom_cfg.write_text(
            json.dumps(
                {
                    "global": {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": f"{SCRAPE_S}s"},
                    "rule_files": [str(rules_for_test(tmp))],
                    "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{self.am_port}"]}]}]},
                    "scrape_configs": [
                        {"job_name": "node", "static_configs": [{"targets": [n.instance for n in nodes]}]}
                    ],
                }
            )
        )
        self.procs = [
            subprocess.Popen(
                [
                    "prometheus-alertmanager",
                    f"--config.file={am_cfg}",
                    f"--storage.path={tmp / 'am'}",
                    f"--web.listen-address=127.0.0.1:{self.am_port}",
                    "--cluster.listen-address=",
                ],
                stdout=subprocess.DEVNULL,
                stderr=open(tmp / "alertmanager.log", "w"),  # noqa: SIM115 - closed with the process
            ),
            subprocess.Popen(
                [
                    "prometheus",
                    f"--config.file={prom_cfg}",
                    f"--storage.tsdb.path={tmp / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.prom_port}",
                    "--rules.alert.resend-delay=1s",
                ],
                stdout=subprocess.DEVNULL,
                stderr=open(tmp / "prometheus.log", "w"),  # noqa: SIM115
            ),
        ]

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.prom_port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return list(self.api("query", query=expr)["result"])

    def alerts(self, name: str, state: str) -> list[dict[str, Any]]:
        try:
            return [a for a in self.api("alerts")["alerts"] if a["labels"]["alertname"] == name and a["state"] == state]
        except OSError:
            return []

    def ready(self) -> bool:
        try:
            return all(t["health"] == "up" for t in self.api("targets")["activeTargets"]) and bool(
                self.api("targets")["activeTargets"]
            )
        except OSError:
            return False

    def stop(self) -> None:
        for p in reversed(self.procs):
            stop(p)


@pytest.fixture
def fleet() -> Iterator[tuple[list[Node], Stack, Webhook, dict[str, float]]]:
    base = Path(tempfile.mkdtemp(prefix="vna-fleet-"))
    base.chmod(0o755)
    nodes = [Node("audit", base, vllm=False), Node("serve", base, vllm=True)]
    webhook = Webhook()
    stack: Optional[Stack] = None
    times: dict[str, float] = {"t0": time.monotonic()}
    try:
        for n in nodes:
            n.start()
        stack = Stack(base, nodes, webhook)
        yield nodes, stack, webhook, times
    finally:
        for n in nodes:
            n.stop()
        if stack is not None:
            stack.stop()
        webhook.close()
        for f in ("prometheus.log", "alertmanager.log"):
            p = base / f
            print(f"--- {f}\n" + (p.read_text()[-3000:] if p.exists() else "none"))
        for n in nodes:
            log = n.bed.stderr_path
            print(f"--- agent {n.name}\n" + (log.read_text()[-3000:] if log.exists() else ""))
        times["wall_s"] = time.monotonic() - times["t0"]
        report = {k: round(v, 2) for k, v in times.items() if k != "t0"}
        print(summary(report))
        print("fleet e2e times (s):", json.dumps(report))
        if os.environ.get("VNA_FLEET_REPORT"):
            Path(os.environ["VNA_FLEET_REPORT"]).write_text(json.dumps(report, indent=1) + "\n")
        shutil.rmtree(base, ignore_errors=True)


MEASURED = {  # report key: what it measures (webhook arrival time - the step's start)
    "drift_fire_s": f"setting broken -> SettingDrifted firing (for: 3s, {SCRAPE_S} s scrape/eval, 1 s drift interval)",
    "drift_resolve_s": "`apply --only` -> SettingDrifted resolved",
    "heartbeat_fire_s": f"agent stopped -> HeartbeatStale firing (threshold {HEARTBEAT_STALE_S} s, for: 2s)",
    "stack_ready_s": "start -> both agents scraped, both nodes compliant",
    "wall_s": "the whole test (start, checks, stop)",
}


def summary(report: dict[str, float]) -> str:
    """The measured times, one line each, for the lead to quote (a step that did not run says n/a)."""
    rows = [f"  {report[k]:7.2f} s  {w}" if k in report else f"      n/a  {w}" for k, w in MEASURED.items()]
    return "\n".join(["fleet e2e measured (wall clock):", *rows])


def dashboard_queries() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    out = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"]))
    return out


def concrete(expr: str) -> str:
    """The dashboard's variables as Grafana would fill them (all nodes, a 5 m range)."""
    return expr.replace("$instance", ".+").replace("$__range", "5m").replace("$__rate_interval", "1m")


def test_fleet_alerts_and_dashboard_with_real_prometheus(fleet: Any) -> None:
    nodes, stack, webhook, times = fleet
    audit, serve = nodes
    wait_for(stack.ready, "Prometheus up and both node_exporters scraped")
    wait_for(lambda: "vllm_nodeagent_vllm_up 1.0" in serve.textfile(), "the stand-in vLLM past the readiness gate")
    wait_for(lambda: len(stack.query("vllm_nodeagent_heartbeat_timestamp_seconds")) == 2, "both agents in Prometheus")
    wait_for(
        lambda: len(stack.query('vllm_nodeagent_setting_compliant{id="sysctl.vm.max_map_count"} == 1')) == 2,
        "both nodes compliant",
    )
    assert not stack.alerts("VllmNodeagentSettingDrifted", "pending") and not stack.alerts(
        "VllmNodeagentSettingDrifted", "firing"
    )
    times["stack_ready_s"] = time.monotonic() - times["t0"]

    # Every dashboard query returns series against the real thing (increase() needs two samples in its range).
    wait_for(lambda: stack.query("count_over_time(vllm_nodeagent_build_info[1m]) >= 3"), "three scrapes")
    wait_for(lambda: stack.query("vllm_nodeagent_vllm_ready_seconds"), "time to READY in Prometheus")
    wait_for(lambda: stack.query("vllm_nodeagent_prewarm_resident_ratio"), "prewarm residency in Prometheus")
    empty = [(title, expr) for title, expr in dashboard_queries() if not stack.query(concrete(expr))]
    assert empty == [], f"dashboard queries without data: {empty}"
    assert len(dashboard_queries()) >= 8

    # Break a setting on one node (audit mode: reported, not re-applied).
    knob = audit.bed.root / "proc/sys/vm/max_map_count"
    t_break = time.time()
    knob.write_text("100\n")
    fired = wait_for(
        lambda: webhook.first("VllmNodeagentSettingDrifted", "firing", audit.instance), "the drift alert at the webhook"
    )
    times["drift_fire_s"] = fired[0] - t_break
    alert = fired[1]
    assert alert["labels"]["id"] == "sysctl.vm.max_map_count" and alert["labels"]["severity"] == "warning"
    assert alert["annotations"]["summary"] == f"sysctl.vm.max_map_count drifted on {audit.instance}"
    assert alert["annotations"]["runbook_url"].endswith("docs/fleet.md#vllmnodeagentsettingdrifted")
    active = stack.alerts("VllmNodeagentSettingDrifted", "firing")
    assert [a["labels"]["instance"] for a in active] == [audit.instance]  # not the healthy node
    assert stack.query(f'vllm_nodeagent_drift_events_total{{instance="{audit.instance}"}} == 1')

    # apply puts it back; the alert resolves.
    t_apply = time.time()
    r = audit.agent("apply", "--only", "sysctl.vm.max_map_count")
    assert r.returncode == 0, r.stdout + r.stderr
    resolved = wait_for(
        lambda: webhook.first("VllmNodeagentSettingDrifted", "resolved", audit.instance), "the drift alert resolved"
    )
    times["drift_resolve_s"] = resolved[0] - t_apply
    assert webhook.first("VllmNodeagentSettingDrifted", "firing", serve.instance) is None

    # Stop one agent: its textfile stays, node_exporter keeps serving it; only the heartbeat ages.
    t_stop = time.time()
    audit.bed.signal(signal.SIGTERM)
    assert audit.bed.wait_exit() == 0
    hb = wait_for(lambda: webhook.first("VllmNodeagentHeartbeatStale", "firing", audit.instance), "the heartbeat alert")
    times["heartbeat_fire_s"] = hb[0] - t_stop
    assert audit.instance in hb[1]["annotations"]["summary"]
    assert stack.query(f'vllm_nodeagent_build_info{{instance="{audit.instance}"}}')  # the file is still served
    assert webhook.first("VllmNodeagentHeartbeatStale", "firing", serve.instance) is None
