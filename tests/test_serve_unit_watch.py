"""Split layout: the host agent's vllm_up/restarts come from systemd's record of the serve unit (ActiveState,
NRestarts) instead of staying 0. systemctl is replaced by recorded `systemctl show` answers (no systemd as PID 1 here;
the VM bed runs the real one)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from vllm_nodeagent import log
from vllm_nodeagent.config import Config
from vllm_nodeagent.context import Context
from vllm_nodeagent.daemon.loop import Loop
from vllm_nodeagent.daemon.metrics import Metrics
from vllm_nodeagent.daemon.serve_unit_watch import POLL_S, ServeUnitWatch, parse_show
from vllm_nodeagent.host import Host


def metric(text: str, name: str) -> float:
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")]
    assert len(values) == 1, text
    return values[0]


def test_parse_show_reads_key_value_lines() -> None:
    assert parse_show("ActiveState=active\nNRestarts=3\nnoise\n") == {"ActiveState": "active", "NRestarts": "3"}
    assert parse_show("") == {}


def test_up_and_restarts_follow_the_serve_unit(tmp_path: Path) -> None:
    log.configure("json")
    now = [100.0]
    ctx = Context(host=Host(tmp_path), config=Config(path="t"), config_arg=None, log_format="json")
    loop = Loop(ctx, topology=cast(Any, object()), clock=lambda: now[0])
    textfile = tmp_path / "agent.prom"
    loop.metrics = Metrics(str(textfile))
    answers = iter(
        [
            "ActiveState=activating\nNRestarts=2\n",  # start: loading, restarts counted from here
            "ActiveState=active\nNRestarts=2\n",
            "ActiveState=activating\nNRestarts=4\n",  # two restarts since
            "",  # systemd did not answer: the last values stay
            "ActiveState=active\nNRestarts=0\n",
        ]
    )  # an operator restarted it: the count resets
    watch = ServeUnitWatch(loop, show=lambda: next(answers))
    expect = [(0, 0), (1, 0), (0, 2), (0, 2), (1, 2)]
    watch.start()
    for i, (up, restarts) in enumerate(expect):
        if i:
            assert watch.next_deadline(now[0]) == now[0] + POLL_S
            now[0] += POLL_S
            watch.tick(now[0])
        loop.metrics.write()
        text = textfile.read_text()
        assert metric(text, "vllm_nodeagent_vllm_up") == up, (i, text)
        assert metric(text, "vllm_nodeagent_vllm_restarts_total") == restarts, (i, text)
    assert watch.status().facts == "vLLM unit active"


def test_not_due_before_its_deadline(tmp_path: Path) -> None:
    now = [10.0]
    ctx = Context(host=Host(tmp_path), config=Config(path="t"), config_arg=None, log_format="json")
    loop = Loop(ctx, topology=cast(Any, object()), clock=lambda: now[0])
    calls: list[int] = []
    watch = ServeUnitWatch(loop, show=lambda: calls.append(1) or "ActiveState=active\n")
    watch.start()
    assert watch.next_deadline(now[0]) == 10.0 + POLL_S
    watch.tick(now[0] + 1)
    assert len(calls) == 1
    watch.tick(now[0] + POLL_S)
    assert len(calls) == 2
