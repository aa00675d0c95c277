from __future__ import annotations

import os
from pathlib import Path

import pytest

from vllm_nodeagent import cli
from vllm_nodeagent.config import ConfigError, parse_config

REPO = Path(__file__).resolve().parent.parent


def test_sample_config_is_valid_and_recommended() -> None:
    cfg = parse_config((REPO / "etc/config.toml").read_text(), "etc/config.toml")
    assert cfg.sysctl is not None
    by_name = {s.name: s for s in cfg.sysctl}
    assert by_name["vm.max_map_count"].value == "262144"
    assert by_name["vm.max_map_count"].mode == "floor"
    assert cfg.thp is not None and cfg.thp.enabled == "madvise"
    assert cfg.block is not None and cfg.block.scheduler == "none"
    assert cfg.vllm is not None and cfg.vllm.command == ["vllm", "serve"]


def test_absent_sections_are_unmanaged() -> None:
    cfg = parse_config("[thp]\nenabled = 'never'\n", "c.toml")
    assert cfg.sysctl is None and cfg.block is None and cfg.vllm is None
    assert cfg.thp is not None and cfg.thp.defrag is None
    assert cfg.agent.state_dir == "/var/lib/vllm-nodeagent"


def test_sysctl_forms() -> None:
    cfg = parse_config(
        '[sysctl]\n"vm.swappiness" = { value = 10, mode = "exact" }\n'
        '"net.ipv4.tcp_rmem" = "4096  87380 134217728"\n"net.ipv4.tcp_congestion_control" = "bbr"\n',
        "c.toml",
    )
    assert cfg.sysctl is not None
    got = {s.name: (s.value, s.mode) for s in cfg.sysctl}
    assert got == {
        "vm.swappiness": ("10", "exact"),
        "net.ipv4.tcp_rmem": ("4096 87380 134217728", "floor"),
        "net.ipv4.tcp_congestion_control": ("bbr", "exact"),  # words cannot be floors
    }


BAD = [
    # (toml, fragments the one-line message must contain)
    ("[thp\nenabled = 1", ["c.toml:1:", "malformed TOML"]),
    ("[nosuch]\nx = 1", ["c.toml:1:", "nosuch", "unknown section"]),
    ("[thp]\nenabled = 'madvise'\nbogus = 3", ["c.toml:3:", "thp.bogus = 3", "unknown key"]),
    ("[thp]\nenabled = 'sometimes'", ["c.toml:2:", "thp.enabled = 'sometimes'", "expected one of always"]),
    ("[agent]\ndrift_interval_s = 0", ["c.toml:2:", "agent.drift_interval_s = 0", "at least 1"]),
    ("[agent]\ndrift_interval_s = 'often'", ["agent.drift_interval_s = 'often'", "expected an integer"]),
    ("[agent]\nrevert_on_stop = 1", ["agent.revert_on_stop = 1", "true or false"]),
    ("[agent]\nstate_dir = 'relative/dir'", ["agent.state_dir", "absolute path"]),
    ("[prewarm]\nmemory_budget_fraction = 2.0", ["prewarm.memory_budget_fraction = 2.0", "at most 0.95"]),
    ("[vllm]\ngpus = [0, 0]", ["vllm.gpus = [0, 0]", "duplicate"]),
    ("[vllm]\ngpus = ['0']", ["vllm.gpus", "list of integers"]),
    ("[vllm]\ncommand = []", ["vllm.command = []", "must name a program"]),
    ("[vllm]\nnuma = 'spread'", ["vllm.numa = 'spread'", "bind, preferred, interleave, none"]),
    ("[vllm]\nenv = { 'BAD-NAME' = 'x' }", ["vllm.env.BAD-NAME = 'x'", "environment variable"]),
    ("[block]\ndevices = ['sd*']", ["block.scheduler", "required key is missing"]),
    ("[block]\ndevices = ['sd*']\nscheduler = 'cfq'", ["block.scheduler = 'cfq'", "expected one of"]),
    ("[sysctl]\n'../../etc/passwd' = 1", ["sysctl.../../etc/passwd", "not a sysctl name"]),
    (
        "[sysctl]\n'vm.max_map_count' = 1180591620717411303424",
        ["c.toml:2:", "sysctl.vm.max_map_count = ", "out of range"],
    ),
    ("[sysctl]\n'vm.max_map_count' = '1180591620717411303424'", ["c.toml:2:", "out of range"]),
    ("[sysctl]\n'vm.max_map_count' = '26\u0662144'", ["sysctl.vm.max_map_count = ", "non-ASCII"]),
    ("[sysctl]\n'vm.max_map_count' = \"262144\\u001b[2J\"", ["sysctl.vm.max_map_count = ", "control"]),
    ("[sysctl]\n'kernel.numa_balancing' = 0", ["kernel.numa_balancing is a switch", 'mode = "exact"']),
    ("[sysctl]\n'vm.min_free_kbytes' = 0", ["a floor of 0 never changes anything", 'mode = "exact"']),
    ("[sysctl]\n'vm.x' = { value = 'lots', mode = 'floor' }", ["a floor needs integers", 'mode = "exact"']),
    ("[sysctl]\n'vm.max_map_count' = true", ["sysctl.vm.max_map_count = true", "integer or a string"]),
    ("[sysctl]\n'vm.x' = { value = 1, mode = 'max' }", ["sysctl.vm.x.mode = 'max'", "floor, exact or range"]),
    ("[sysctl]\n'vm.x' = { mode = 'exact' }", ["sysctl.vm.x", "needs a value"]),
    ("thp = 3", ["thp = 3", "expected a table"]),
    ("[vllm]\nhealth_url = 'file:///etc/shadow'", ["vllm.health_url = 'file:///etc/shadow'", "http://"]),
]


@pytest.mark.parametrize(("text", "fragments"), BAD)
def test_bad_config_one_line_message(text: str, fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(text, "c.toml")
    message = str(exc.value)
    assert "\n" not in message
    for f in fragments:
        assert f in message, (f, message)


def write_cfg(path: Path, text: str, mode: int = 0o644) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.mark.parametrize(("text", "_"), BAD[:6])
def test_cli_bad_config_exits_2_and_names_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, _: list[str]
) -> None:
    cfg = write_cfg(tmp_path / "bad.toml", text)
    (tmp_path / "root").mkdir()
    rc = cli.main(["--root", str(tmp_path / "root"), "--config", str(cfg), "doctor"])
    err = capsys.readouterr().err
    assert rc == 2
    assert str(cfg) in err and err.count("\n") == 1


def test_explicit_missing_config_is_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["--root", str(tmp_path), "--config", str(tmp_path / "nope.toml"), "topology", "--json"])
    assert rc == 2
    assert "nope.toml: no such file" in capsys.readouterr().err


def test_missing_default_config_means_builtin_defaults(hgx: object, tmp_path: Path) -> None:
    from vllm_nodeagent.config import DEFAULT_CONFIG_PATH, load_config
    from vllm_nodeagent.host import Host

    cfg = load_config(None, Host(tmp_path).path(DEFAULT_CONFIG_PATH))
    assert cfg.path == "(built-in defaults)" and cfg.sysctl is None


def test_default_config_is_read_under_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "root"
    cfg = root / "etc/vllm-nodeagent/config.toml"
    cfg.parent.mkdir(parents=True)
    write_cfg(cfg, "[thp]\nenabled = 'bogus'\n")
    assert cli.main(["--root", str(root), "doctor"]) == 2
    assert "/etc/vllm-nodeagent/config.toml:2:" in capsys.readouterr().err


@pytest.mark.parametrize("mode", [0o664, 0o646, 0o666])
def test_group_or_world_writable_config_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: int) -> None:
    cfg = write_cfg(tmp_path / "c.toml", "[thp]\nenabled = 'never'\n", mode)
    assert cli.main(["--root", str(tmp_path), "--config", str(cfg), "doctor"]) == 2
    assert "writable" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() != 0, reason="ownership check applies when running as root")
def test_config_not_owned_by_root_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_cfg(tmp_path / "c.toml", "[thp]\nenabled = 'never'\n")
    os.chown(cfg, 65534, 65534)
    assert cli.main(["--root", str(tmp_path), "--config", str(cfg), "doctor"]) == 2
    err = capsys.readouterr().err
    assert "not owned by root" in err and "uid 65534" in err
