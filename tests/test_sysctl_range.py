"""Range sysctls (issue 26.6): ``net.ipv4.ip_local_port_range`` and any two-integer ``*_range`` sysctl compare as
ranges — the live range must contain the configured one, apply widens it — not as per-field floors, which raised
the low end ("1024 65000" on "32768 60999" wrote "32768 65000"). On a fake tree and on the real kernel in a fresh
network namespace."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from conftest import requires_root
from fakehost import FakeHost

from vllm_nodeagent.config import ConfigError, parse_config
from vllm_nodeagent.host import Host
from vllm_nodeagent.settings import engine
from vllm_nodeagent.settings.journal import Journal
from vllm_nodeagent.settings.sysctl import Sysctl

PORTS = "net.ipv4.ip_local_port_range"


def setting(text: str) -> Sysctl:
    config = parse_config(f"[sysctl]\n{text}\n", "t.toml")
    assert config.sysctl
    return Sysctl.from_setting(Host("/"), config.sysctl[0])


@pytest.mark.parametrize(
    ("live", "compliant", "target"),
    [
        ("32768 60999", False, "1024 65000"),  # per-field floors wrote 32768 65000
        ("1000 65535", True, "1000 65535"),  # contains it: left as is
        ("2000 65535", False, "1024 65535"),  # widened at the low end only
        ("1024 60000", False, "1024 65000"),
    ],
)
def test_a_range_contains_and_widens(live: str, compliant: bool, target: str) -> None:
    s = setting(f'"{PORTS}" = "1024 65000"')
    assert s.mode == "range"
    assert s.compliant(live) is compliant
    assert s.target(live) == target


def test_any_range_shaped_name_and_the_config_can_say_otherwise() -> None:
    assert setting('"net.ipv4.ping_group_range" = "0 2147483647"').mode == "range"
    assert setting('"net.foo.bar_range" = "1 9"').mode == "range"
    floor = setting(f'"{PORTS}" = {{ value = "1024 65000", mode = "floor" }}')
    assert floor.mode == "floor" and floor.target("32768 60999") == "32768 65000"  # asked for: per-field floors
    assert setting(f'"{PORTS}" = {{ value = "1024 65000", mode = "exact" }}').target("1 2") == "1024 65000"


@pytest.mark.parametrize("value", ['"1024"', '"65000 1024"', '"1 2 3"', '"low high"'])
def test_a_bad_range_is_a_config_error(value: str) -> None:
    with pytest.raises(ConfigError, match="a range takes two integers"):
        parse_config(f'[sysctl]\n"{PORTS}" = {value}\n', "t.toml")


def test_apply_on_a_tree(hgx: FakeHost, tmp_path: Path) -> None:
    hgx.sysctl(PORTS, "32768\t60999")
    s = Sysctl.from_setting(Host(str(hgx.root)), parse_config(f'[sysctl]\n"{PORTS}" = "1024 65000"\n', "t").sysctl[0])  # type: ignore[index]
    o = engine.apply_one(s, Journal(Host(str(hgx.root)), "/var/lib/vna"))
    assert o.status == engine.CHANGED and o.current == "1024 65000"


@pytest.mark.realhost
@requires_root
def test_the_real_kernel_takes_the_widened_range(tmp_path: Path) -> None:
    if not shutil.which("ip"):
        pytest.skip("iproute2 (ip) not installed")
    ns = f"vna-range-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        path = "/proc/sys/net/ipv4/ip_local_port_range"

        def read() -> str:
            return " ".join(
                subprocess.run(["ip", "netns", "exec", ns, "cat", path], capture_output=True, text=True).stdout.split()
            )

        subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", f"echo '32768 60999' > {path}"], check=True)
        cfg = tmp_path / "c.toml"
        cfg.write_text(f'[agent]\nstate_dir = "{tmp_path}/state"\n[sysctl]\n"{PORTS}" = "1024 65000"\n')
        cfg.chmod(0o600)
        import sys

        res = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "vllm_nodeagent.cli", "--config", str(cfg), "apply"],
            capture_output=True, text=True, cwd=str(Path(__file__).resolve().parent.parent),
        )  # fmt: skip
        assert res.returncode == 0, res.stdout + res.stderr
        assert read() == "1024 65000"  # not "32768 65000"
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
