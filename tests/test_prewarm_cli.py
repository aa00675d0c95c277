"""`vllm-nodeagent prewarm` through cli.main: output, budget parsing, config targets, exit codes, --lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from vllm_nodeagent.cli import main

MIB = 1 << 20
REPO = Path(__file__).resolve().parent.parent


def write_file(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(os.urandom(size))
        f.flush()
        os.fsync(f.fileno())
    return path


def make_root(tmp_path: Path, mem_available_kb: int = 8 * 1024 * 1024, config: str = "") -> Path:
    root = tmp_path / "root"
    (root / "proc").mkdir(parents=True)
    (root / "proc" / "meminfo").write_text(
        f"MemTotal:       {2 * mem_available_kb} kB\nMemAvailable:   {mem_available_kb} kB\n"
    )
    if config:
        etc = root / "etc" / "vllm-nodeagent"
        etc.mkdir(parents=True)
        (etc / "config.toml").write_text(config)
    return root


def run(root: Path, *args: str) -> int:
    return main(["--root", str(root), "--log-format", "json", "prewarm", *args])


def test_json_output_and_residency(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "model"
    write_file(model / "model.safetensors", 3 * MIB)
    write_file(model / "config.json", 2000)
    for p in model.iterdir():
        fd = os.open(p, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    assert run(make_root(tmp_path), "--json", str(model)) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("files", "total_bytes", "resident_before_bytes", "resident_after_bytes", "seconds", "gbps"):
        assert key in out
    assert out["files"] == 2 and out["total_bytes"] == 3 * MIB + 2000
    assert out["resident_after_bytes"] == out["total_bytes"]
    assert out["errors"] == [] and out["skipped"] == []


def test_text_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = write_file(tmp_path / "w.gguf", MIB)
    assert run(make_root(tmp_path), str(f)) == 0
    out = capsys.readouterr().out
    assert out.startswith("files 1  total 1.0 MiB") and "(100.0%)" in out


def test_missing_path_fails_but_warms_the_rest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = write_file(tmp_path / "w.safetensors", MIB)
    assert run(make_root(tmp_path), "--json", str(tmp_path / "nope"), str(f)) == 1
    cap = capsys.readouterr()
    assert json.loads(cap.out)["files"] == 1
    assert f"vllm-nodeagent: prewarm: {tmp_path / 'nope'}: no such file or directory" in cap.err


def test_unknown_model_id_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", "/cache")
    assert run(make_root(tmp_path), "acme/absent") == 1
    err = capsys.readouterr().err
    assert f"acme/absent: not a path, and not in the Hugging Face cache {tmp_path / 'root' / 'cache'} " in err


@pytest.mark.parametrize("bad", ["lots", "1.5", "0", "-3G", "0.0"])
def test_bad_budget_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: str) -> None:
    f = write_file(tmp_path / "w.safetensors", 4096)
    assert run(make_root(tmp_path), f"--budget={bad}", str(f)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--budget" in err


def test_budget_fraction_of_fake_meminfo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    big = write_file(tmp_path / "m" / "big.safetensors", 3 * MIB)
    write_file(tmp_path / "m" / "config.json", 1000)
    root = make_root(tmp_path, mem_available_kb=4 * 1024)  # 4 MiB -> 0.5 = 2 MiB
    assert run(root, "--json", "--budget", "0.5", str(tmp_path / "m")) == 0
    cap = capsys.readouterr()
    out = json.loads(cap.out)
    assert out["budget_bytes"] == 2 * MIB
    assert out["files"] == 1 and out["total_bytes"] == 1000
    assert out["skipped"] == [{"path": str(big), "bytes": 3 * MIB}]
    assert "not warmed" in cap.err


def test_default_budget_comes_from_config_fraction(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_file(tmp_path / "m" / "big.safetensors", 3 * MIB)
    root = make_root(tmp_path, mem_available_kb=8 * 1024, config="[prewarm]\nmemory_budget_fraction = 0.25\n")
    assert run(root, "--json", str(tmp_path / "m")) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["budget_bytes"] == 2 * MIB and out["files"] == 0 and out["skipped_bytes"] == 3 * MIB


def test_unreadable_meminfo_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = write_file(tmp_path / "w.safetensors", 4096)
    root = make_root(tmp_path)
    (root / "proc" / "meminfo").unlink()
    assert run(root, str(f)) == 1
    assert "MemAvailable" in capsys.readouterr().err


def test_no_targets_and_none_configured(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(make_root(tmp_path)) == 2
    assert "no TARGET" in capsys.readouterr().err


def test_targets_from_config_with_vllm_env_hf_home(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hf_home = "/hf"  # a path of the --root tree: the cache is looked up there
    repo = tmp_path / "root" / "hf" / "hub" / "models--acme--tiny"
    write_file(repo / "blobs" / "abc", 2 * MIB)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("r1")
    (repo / "snapshots" / "r1").mkdir(parents=True)
    (repo / "snapshots" / "r1" / "model.safetensors").symlink_to("../../blobs/abc")
    extra = write_file(tmp_path / "extra" / "tokenizer.json", 5000)
    config = f'[prewarm]\npaths = ["{extra.parent}"]\n[vllm]\nmodel = "acme/tiny"\nenv = {{ HF_HOME = "{hf_home}" }}\n'
    assert run(make_root(tmp_path, config=config), "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["files"] == 2 and out["total_bytes"] == 2 * MIB + 5000
    assert out["paths"] == [str(repo / "snapshots" / "r1" / "model.safetensors"), str(extra)]


def test_lock_holds_until_sigterm(tmp_path: Path) -> None:
    f = write_file(tmp_path / "w.safetensors", 2 * MIB)
    root = make_root(tmp_path)
    code = f"import sys; sys.path.insert(0, {str(REPO)!r}); from vllm_nodeagent.cli import main; sys.exit(main())"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            code,
            "--root",
            str(root),
            "--log-format",
            "json",
            "prewarm",
            "--json",
            "--lock",
            str(f),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None and proc.stdout is not None
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "holding until SIGINT/SIGTERM" in line:
                break
        assert any("locked 2.0 MiB in 1 file(s)" in ln for ln in lines), lines
        status = Path(f"/proc/{proc.pid}/status").read_text()
        vmlck = next(int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("VmLck:"))
        assert vmlck >= 2048
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert json.loads(out)["locked_bytes"] == 2 * MIB


# -- issue 22: HF revisions and refs that walk out of the cache --------------------------------------------
def _hf_repo(tmp_path: Path) -> tuple[str, Path]:
    """models--acme--tiny in the --root tree's /cache (under --root a model id is looked up in the tree):
    (the cache as HF_HUB_CACHE names it, the repo where it lies)."""
    repo = tmp_path / "root" / "cache" / "models--acme--tiny"
    rev = "0123456789abcdef0123456789abcdef01234567"
    write_file(repo / "snapshots" / rev / "config.json", 100)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    return "/cache", repo


@pytest.mark.parametrize("depth", [3, 12])
def test_revision_walking_out_of_the_cache_is_refused_without_echo(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, depth: int
) -> None:
    cache, _ = _hf_repo(tmp_path)
    secret = tmp_path / "root" / "x" / "file"
    secret.parent.mkdir()
    secret.write_text("TOP-SECRET-LINE\nmore\n")
    monkeypatch.setenv("HF_HUB_CACHE", cache)
    # From refs/: three ".." reach the tree's root; deeper ones stop at "/", then the absolute path down again.
    rel = "/".join([".."] * depth)
    target = f"acme/tiny@{rel}/{secret.relative_to('/') if depth > 3 else 'x/file'}"
    assert run(make_root(tmp_path), target) == 1
    err = capsys.readouterr().err
    assert "TOP-SECRET" not in err
    assert [ln for ln in err.splitlines() if ln.startswith("vllm-nodeagent:")] == [
        f"vllm-nodeagent: prewarm: {target}: revision {target.partition('@')[2]!r} is not a ref name or commit id"
        " (empty, '.' or '..' part)"
    ]


def test_ref_file_linked_outside_the_cache_does_not_choose_the_snapshot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, repo = _hf_repo(tmp_path)
    other = "fedcba9876543210fedcba9876543210fedcba98"
    write_file(repo / "snapshots" / other / "model.safetensors", MIB)  # what the planted ref wants warmed
    (tmp_path / "planted").write_text(other)
    (repo / "refs" / "main").unlink()
    (repo / "refs" / "main").symlink_to(tmp_path / "planted")
    monkeypatch.setenv("HF_HUB_CACHE", cache)
    assert run(make_root(tmp_path), "--json", "acme/tiny") == 1
    cap = capsys.readouterr()
    assert "refusing a ref that leads out of the cache" in cap.err
    assert json.loads(cap.out)["files"] == 0


def test_ref_with_junk_content_is_refused_without_echo(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, repo = _hf_repo(tmp_path)
    (repo / "refs" / "main").write_text("../../../../etc SECRET-CONTENT\n")
    monkeypatch.setenv("HF_HUB_CACHE", cache)
    assert run(make_root(tmp_path), "acme/tiny") == 1
    err = capsys.readouterr().err
    assert "SECRET-CONTENT" not in err and "content not shown" in err
