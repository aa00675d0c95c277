"""The daemon loop as a scheduler (issue 15): components with a next deadline and a tick, each behind its own
failure boundary. Fake components, the real Loop (real select, self-pipe and signals): a component whose tick
raises is logged, counted and ticked again while the others keep ticking; the earliest deadline wins; a stop reaches
every component even when one of them fails to stop."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path
from typing import Any, Callable, Optional, cast

import pytest

from vllm_nodeagent import log
from vllm_nodeagent.config import Config
from vllm_nodeagent.context import Context
from vllm_nodeagent.daemon.loop import Loop, Status
from vllm_nodeagent.host import Host


@pytest.fixture(autouse=True)
def json_log(capsys: pytest.CaptureFixture[str]) -> None:
    log.configure("json")  # sys.stderr as it is when a line is logged: this test's (capsys)


class Fake:
    """A component that wants a tick every ``every`` seconds (math.inf: never) and records what the loop did."""

    def __init__(
        self,
        name: str,
        every: float,
        calls: list[str],
        on_tick: Optional[Callable[[Fake], None]] = None,
        fail_stop: bool = False,
    ) -> None:
        self.name = name
        self.every = every
        self.calls = calls
        self.on_tick = on_tick
        self.fail_stop = fail_stop
        self.ticks = 0
        self.next = 0.0
        self.fds: list[int] = []

    def start(self) -> None:
        self.calls.append(f"{self.name}.start")

    def ready(self) -> bool:
        return True

    def next_deadline(self, now: float) -> float:
        return self.next

    def wait_fds(self) -> list[int]:
        return self.fds

    def tick(self, now: float) -> None:
        self.ticks += 1
        self.calls.append(f"{self.name}.tick")
        self.next = now + self.every
        if self.on_tick is not None:
            self.on_tick(self)

    def status(self) -> Status:
        return Status("watching", f"{self.ticks} {self.name}")

    def reload(self, old: Config, new: Config) -> None:
        self.calls.append(f"{self.name}.reload")

    def stop(self) -> None:
        self.calls.append(f"{self.name}.stop")
        if self.fail_stop:
            raise OSError(5, "a stop that fails")

    def close(self) -> None:
        self.calls.append(f"{self.name}.close")


def new_loop(tmp_path: Path, clock: Optional[Callable[[], float]] = None) -> Loop:
    ctx = Context(host=Host(tmp_path), config=Config(path="t"), config_arg=None, log_format="json")
    topo = cast(Any, object())  # the fakes need none; a real one is never discovered in these tests
    return Loop(ctx, topology=topo, **({"clock": clock} if clock else {}))


def failed_events(err: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in err.splitlines() if '"component_failed"' in line]


def test_a_failing_tick_is_logged_and_rescheduled_while_another_keeps_ticking(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    loop = new_loop(tmp_path)
    calls: list[str] = []

    def broken(c: Fake) -> None:
        raise RuntimeError(f"a bug in tick {c.ticks}")

    def healthy(c: Fake) -> None:
        if c.ticks >= 5 and bad.ticks >= 3:
            loop.request(signal.SIGTERM)

    bad = Fake("drift", 0.001, calls, on_tick=broken)
    good = Fake("serving", 0.001, calls, on_tick=healthy)
    loop.retry_after_failure_s = 0.01
    loop.add(bad)
    loop.add(good)
    assert loop.run() == 0
    assert bad.ticks >= 3 and good.ticks >= 5  # the broken one was ticked again; the other never stopped
    events = failed_events(capsys.readouterr().err)
    assert len(events) == bad.ticks == loop.failures["drift"]
    assert [e["failures"] for e in events] == list(range(1, bad.ticks + 1))
    assert all(e["component"] == "drift" for e in events)
    assert events[0]["error"] == "RuntimeError: a bug in tick 1"
    assert "Traceback (most recent call last)" in events[0]["traceback"] and "broken" in events[0]["traceback"]
    assert "serving" not in loop.failures


def test_the_earliest_deadline_wins(tmp_path: Path) -> None:
    now = [100.0]
    loop = new_loop(tmp_path, clock=lambda: now[0])
    calls: list[str] = []
    late, soon, idle = Fake("late", 60, calls), Fake("soon", 5, calls), Fake("idle", math.inf, calls)
    late.next, soon.next, idle.next = 160.0, 105.0, math.inf
    for c in (late, soon, idle):
        loop.add(c)
    assert loop.next_deadline(now[0]) == 105.0
    loop.tick(104.9)
    assert calls == []  # nothing is due yet
    loop.tick(105.0)
    assert calls == ["soon.tick"] and loop.next_deadline(105.0) == 110.0
    loop.tick(160.0)
    assert calls == ["soon.tick", "late.tick", "soon.tick"] and idle.ticks == 0
    assert loop.next_deadline(160.0) == 165.0


def test_the_loop_sleeps_until_the_earliest_deadline(tmp_path: Path) -> None:
    """The real loop: a component due in an hour is not ticked while a frequent one ticks and stops the loop."""
    loop = new_loop(tmp_path)
    calls: list[str] = []

    def stop_after_three(c: Fake) -> None:
        if c.ticks == 3:
            loop.request(signal.SIGTERM)

    hourly = Fake("hourly", 3600, calls)
    hourly.next = loop.clock() + 3600
    loop.add(hourly)
    loop.add(Fake("often", 0.001, calls, on_tick=stop_after_three))
    assert loop.run() == 0
    assert hourly.ticks == 0 and calls.count("often.tick") == 3


def test_a_readable_fd_makes_its_component_due(tmp_path: Path) -> None:
    loop = new_loop(tmp_path)
    calls: list[str] = []
    rfd, wfd = os.pipe()
    try:

        def stop(c: Fake) -> None:
            os.read(rfd, 1)
            loop.request(signal.SIGTERM)

        child = Fake("child", math.inf, calls, on_tick=stop)  # no deadline: only its fd wakes it
        child.next = math.inf
        child.fds = [rfd]
        loop.add(child)
        os.write(wfd, b"x")
        assert loop.run() == 0
        assert child.ticks == 1
    finally:
        os.close(rfd)
        os.close(wfd)


def test_stop_reaches_every_component_last_added_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    loop = new_loop(tmp_path)
    calls: list[str] = []
    host = Fake("host", math.inf, calls)
    # its failure to stop must not keep the host from reverting
    serve = Fake("serve", math.inf, calls, on_tick=lambda c: loop.request(signal.SIGTERM), fail_stop=True)
    host.next = math.inf
    loop.add(host)
    loop.add(serve)
    assert loop.run() == 0
    assert calls == ["host.start", "serve.start", "serve.tick", "serve.stop", "host.stop", "serve.close", "host.close"]
    [event] = failed_events(capsys.readouterr().err)
    assert event["component"] == "serve" and "a stop that fails" in event["error"]


def test_a_stop_during_start_up_skips_the_later_start_steps(tmp_path: Path) -> None:
    loop = new_loop(tmp_path)
    calls: list[str] = []
    host = Fake("host", math.inf, calls)
    serve = Fake("serve", math.inf, calls)
    host.start = lambda: (calls.append("host.start"), loop.request(signal.SIGTERM))  # type: ignore[method-assign]
    loop.add(host)
    loop.add(serve)
    assert loop.run() == 0
    assert calls == ["host.start", "serve.stop", "host.stop", "serve.close", "host.close"]


def test_status_composes_the_components_parts(tmp_path: Path) -> None:
    loop = new_loop(tmp_path)
    calls: list[str] = []
    loop.add(Fake("drift", 1, calls))
    assert loop.status_text() == "watching; 0 drift"

    class Serving(Fake):
        def status(self) -> Status:
            return Status("serving")

    class Loading(Fake):
        def status(self) -> Status:
            return Status("vLLM loading: waiting for http://x/health", alone=True)

    loop.components.insert(0, Serving("vllm", 1, calls))
    assert loop.status_text() == "serving; 0 drift"
    loop.components[0] = Loading("vllm", 1, calls)
    assert loop.status_text() == "vLLM loading: waiting for http://x/health"


def test_reload_reaches_every_component_and_a_failing_one_does_not_stop_the_others(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[agent]\ndrift_interval_s = 7\n")
    ctx = Context(host=Host(tmp_path), config=Config(path="t"), config_arg=str(config), log_format="json")
    loop = Loop(ctx, topology=cast(Any, object()))
    calls: list[str] = []
    first = Fake("first", math.inf, calls)
    second = Fake("second", math.inf, calls)
    first.next = second.next = math.inf

    def broken_reload(old: Config, new: Config) -> None:
        raise ValueError("a bug in reload")

    def reloaded(old: Config, new: Config) -> None:
        calls.append(f"second.reload {old.agent.drift_interval_s}->{new.agent.drift_interval_s}")
        loop.request(signal.SIGTERM)

    first.reload = broken_reload  # type: ignore[method-assign]
    second.reload = reloaded  # type: ignore[method-assign]
    loop.add(first)
    loop.add(second)
    loop.request(signal.SIGHUP)  # queued during start-up, handled once the loop runs
    assert loop.run() == 0
    assert "second.reload 60->7" in calls and ctx.config.agent.drift_interval_s == 7
    [event] = failed_events(capsys.readouterr().err)
    assert event["component"] == "first" and event["error"] == "ValueError: a bug in reload"


def test_a_failed_tick_waits_before_the_next_try(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A tick that raised before moving its own timer on is not retried in a busy loop of tracebacks."""
    loop = new_loop(tmp_path, clock=lambda: 0.0)
    calls: list[str] = []

    def broken(c: Fake) -> None:
        c.next = 0.0  # a bug that leaves its deadline in the past
        raise KeyError("x")

    bad, good = Fake("bad", 1, calls, on_tick=broken), Fake("good", 0.1, calls)
    loop.add(bad)
    loop.add(good)
    loop.tick(10.0)
    assert loop.next_deadline(10.0) == 10.1  # the good one's, not the broken one's past deadline
    loop.tick(10.5)
    assert calls == ["bad.tick", "good.tick", "good.tick"]
    assert loop.next_deadline(10.5) == 10.6
    loop.tick(10.0 + loop.retry_after_failure_s)
    assert calls[-2:] == ["bad.tick", "good.tick"] and loop.failures["bad"] == 2
