"""The command line an operator meets (issue 26.3): global options before or after the command, --help written for
operators with examples per command, the README's command list complete, and vllm-nodeagent(8) generated from the
same parser (the checked-in page is what ships in the .deb/.rpm)."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vllm_nodeagent import cli, manpage

REPO = Path(__file__).resolve().parent.parent
PAGE = REPO / "packaging/files/vllm-nodeagent.8"


def parse(*argv: str) -> argparse.Namespace:
    return cli.parse_args(cli.build_parser(), list(argv))


def test_global_options_before_or_after_the_command() -> None:
    before = parse("--root", "/r", "--config", "/c.toml", "--log-format", "json", "doctor", "--json")
    after = parse("doctor", "--config", "/c.toml", "--json", "--root", "/r", "--log-format", "json")
    for ns in (before, after):
        assert (ns.root, ns.config, ns.log_format, ns.command, ns.json) == ("/r", "/c.toml", "json", "doctor", True)
    assert parse("journal", "show", "--config", "/c.toml").config == "/c.toml"
    defaults = parse("topology")
    assert (defaults.root, defaults.config, defaults.log_format) == ("/", None, None)


def test_root_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_NODEAGENT_ROOT", "/srv/tree")
    assert parse("doctor").root == "/srv/tree"
    assert parse("doctor", "--root", "/other").root == "/other"


def test_an_empty_root_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--root", "", "doctor"])
    assert exc.value.code == 2
    assert "--root: an empty path is not a root" in capsys.readouterr().err


def help_text(*argv: str) -> str:
    res = subprocess.run(
        [sys.executable, "-m", "vllm_nodeagent.cli", *argv, "--help"], capture_output=True, text=True, cwd=REPO
    )
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_help_is_for_operators_with_examples_per_command() -> None:
    top = help_text()
    assert "dispatch table" not in top and "error boundary" not in top  # not the module docstring
    assert "exit status" in top and "5    apply --dry-run: changes pending" in top
    for name, (_, _, examples) in cli.COMMANDS.items():
        assert name in top
        text = help_text(name, *(["show"] if name == "journal" else []))
        assert "examples:" in text and examples[0] in text, name
        # every option says what it does
        assert not re.search(r"^  --[a-z-]+\s*$", text, re.M), text


def test_readme_lists_every_command() -> None:
    readme = (REPO / "README.md").read_text()
    block = readme.split("## Commands", 1)[1].split("```", 2)[1]
    for name in cli.COMMANDS:
        assert re.search(rf"^  {name}\b", block, re.M), f"README's command list lacks {name}"


def test_the_checked_in_man_page_is_the_parser() -> None:
    assert PAGE.read_text() == manpage.render(), "regenerate: python -m vllm_nodeagent.manpage > " + str(PAGE)
    page = PAGE.read_text()
    for name in cli.COMMANDS:
        assert f".SS {name} " in page
    for flag in ("\\-\\-dry\\-run", "\\-\\-only", "\\-\\-strict", "\\-\\-layout", "\\-\\-configured"):
        assert flag in page


@pytest.mark.skipif(not shutil.which("groff"), reason="groff not installed")
def test_the_man_page_renders_without_warnings() -> None:
    res = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(PAGE)], capture_output=True, text=True)
    assert res.returncode == 0 and res.stderr == "", res.stderr


def test_the_packages_ship_the_man_page() -> None:
    nfpm = (REPO / "packaging/nfpm.yaml").read_text()
    assert "dst: /usr/share/man/man8/vllm-nodeagent.8.gz" in nfpm
    assert "files/vllm-nodeagent.8" in (REPO / "packaging/build.sh").read_text()


def test_a_dangling_default_config_link_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    etc = tmp_path / "etc/vllm-nodeagent"
    etc.mkdir(parents=True)
    (etc / "config.toml").symlink_to("/etc/vllm-nodeagent/config.toml.dpkg-new")
    assert cli.main(["--root", str(tmp_path), "doctor", "--json"]) == 2
    err = capsys.readouterr().err
    assert "/etc/vllm-nodeagent/config.toml: a symlink to /etc/vllm-nodeagent/config.toml.dpkg-new" in err
    assert "does not exist" in err
    (etc / "config.toml").unlink()  # no file at all: built-in defaults, as documented
    assert cli.main(["--root", str(tmp_path), "doctor", "--json"]) in (0, 1)


def test_apply_dry_run_exit_pending_or_nothing_to_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fakehost import FakeHost

    h = FakeHost(tmp_path / "root")
    h.cpus(2)
    h.sysctl("vm.max_map_count", "65530")
    cfg = tmp_path / "c.toml"
    cfg.write_text('[agent]\nstate_dir = "/var/lib/vna"\n[sysctl]\n"vm.max_map_count" = 262144\n')
    cfg.chmod(0o600)
    argv = ["--root", str(h.root), "--config", str(cfg), "apply"]
    assert cli.main([*argv, "--dry-run"]) == 5
    assert cli.main(argv) == 0
    assert cli.main([*argv, "--dry-run"]) == 0
    capsys.readouterr()
