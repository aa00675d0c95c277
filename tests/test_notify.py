"""Notifier: no socket = no-op; datagrams on a real socket; watchdog arming rules."""

from __future__ import annotations

import os
import socket
import tempfile

from vllm_nodeagent.daemon.notify import Notifier, monotonic_usec


def test_no_socket_is_a_noop() -> None:
    n = Notifier({})
    assert not n.enabled and n.watchdog_interval_s == 0
    n.ready("x")  # must not raise
    n.watchdog()


def test_messages_arrive_on_the_socket() -> None:
    d = tempfile.mkdtemp(prefix="vna-n-")
    path = os.path.join(d, "s")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(path)
        s.settimeout(5)
        n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000"})
        assert n.enabled and n.watchdog_interval_s == 2.0
        n.status("vLLM loading")
        n.status("vLLM loading")  # unchanged status is not re-sent
        n.reloading()
        n.ready("serving; 0 drift")
        got = [s.recv(4096).decode() for _ in range(3)]
    assert got[0] == "STATUS=vLLM loading"
    lines = got[1].split("\n")
    assert lines[0] == "RELOADING=1" and lines[1].startswith("MONOTONIC_USEC=")
    assert 0 < int(lines[1].split("=")[1]) <= monotonic_usec()
    assert got[2] == "READY=1\nSTATUS=serving; 0 drift"


def test_watchdog_pid_must_match() -> None:
    assert Notifier({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}).watchdog_interval_s == 0
    assert Notifier({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}).watchdog_interval_s == 0.5
